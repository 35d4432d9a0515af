"""``/api/v1/jobs``: submit, list, inspect and cancel jobs, and download their artifacts."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from shared.errors import ApiError, BadRequest, NotFound
from shared.jobs import JobState
from shared.videos import VideoInfo

from services.core.agents import AgentClient, AgentError, AgentRequestError, AgentUnreachable
from services.core.api.dashboard import relay
from services.core.api.deps import AgentsDep, JobId, StoreDep, TokenRequired
from services.core import catalog
from services.core.models import (ERROR_RESPONSES, JOBS_PAGE, EventPublic, EventsPublic, JobCreate, JobPublic, JobsPublic,
                                  RecordingRef, VideoRef)
from services.core.scheduler import estimate_frames
from services.core.store import ACTIVE_STATES, NodeRole, Store

log = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


@router.post("", status_code=201, dependencies=[TokenRequired])
async def create_job(body: JobCreate, store: StoreDep, agents: AgentsDep) -> JobPublic:
    """Queue a job once every video (or the recording) is found in its storage node's catalog."""
    videos = body.videos
    if body.recording is not None:
        videos = await _recording_videos(body.recording, store, agents)
    found = await _catalog_entries(videos, store, agents)
    frames = estimate_frames([found[(v.storage, v.path)].duration_s for v in videos], body.fps, body.max_frames)
    job = await run_in_threadpool(
        store.create_job, videos=[(v.storage, v.path) for v in videos], backend=body.backend,
        fps=body.fps, width=body.width, max_frames=body.max_frames, frames_estimate=frames,
        priority=body.priority, cpu_fallback=body.cpu_fallback,
        recording=body.recording.id if body.recording else None,
    )
    log.info("job %d queued: %d video(s), %s, priority %d", job.id, len(videos), body.backend, body.priority)
    return JobPublic.of(job, (await run_in_threadpool(store.videos_of, [job.id]))[job.id])


@router.get("", response_model=JobsPublic)
async def list_jobs(
    store: StoreDep,
    state: Annotated[list[JobState] | None, Query(description="only jobs in these states")] = None,
    node: Annotated[str | None, Query(max_length=64, description="only jobs placed on this node")] = None,
    q: Annotated[str | None, Query(min_length=1, max_length=200,
                                   description="text in the message, error, recording or a video path")] = None,
    cursor: Annotated[int | None, Query(ge=1, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="page by offset (or by cursor)")] = 0,
) -> Response:
    """Jobs, newest first, filtered by state, node and text; paged by cursor or offset."""
    # Plain rows, one read: ORM objects and a model per job cost most of a list's time
    # (bench/RESULTS.md, "API under load"). An async route with one trip to the store's readers.
    rows, count = await store.read(store.list_job_rows, states=state, node=node, text=q, before_id=cursor,
                                   limit=limit, offset=offset)
    next_cursor = rows[-1]["id"] if len(rows) == limit else None
    # The JSON itself, serialized from the rows (JOBS_PAGE): returning a model would validate
    # 50 jobs into models, which FastAPI validates again, dumps to Python objects, then those
    # to JSON. response_model above keeps the OpenAPI document.
    return Response(JOBS_PAGE.dump_json({"jobs": [JobPublic.row_dict(r) for r in rows], "count": count,
                                         "next_cursor": next_cursor}), media_type="application/json")


@router.get("/{job_id}")
def get_job(job_id: JobId, store: StoreDep) -> JobPublic:
    """One job: state, stage, progress, node, attempt, message, error and artifact links."""
    job = store.get_job(job_id)
    return JobPublic.of(job, store.videos_of([job_id])[job_id])


@router.post("/{job_id}/cancel", dependencies=[TokenRequired])
async def cancel_job(job_id: JobId, store: StoreDep, agents: AgentsDep) -> JobPublic:
    """Cancel an unfinished job, and stop it on its gpu node if it was placed."""
    before = await run_in_threadpool(store.cancel, job_id)
    if before.node is not None and before.state in ACTIVE_STATES:
        await _stop_on_node(store, agents, before.node, job_id)
    job = await run_in_threadpool(store.get_job, job_id)
    return JobPublic.of(job, (await run_in_threadpool(store.videos_of, [job_id]))[job_id])


@router.post("/{job_id}/retry", dependencies=[TokenRequired])
def retry_job(job_id: JobId, store: StoreDep) -> JobPublic:
    """Queue a failed or cancelled job again as a new attempt (409 otherwise); its history stays."""
    job = store.retry(job_id)
    return JobPublic.of(job, store.videos_of([job_id])[job_id])


@router.delete("/{job_id}", status_code=204, dependencies=[TokenRequired],
               responses={503: {"description": "the gpu node could not purge the job's files (retry, or force)"}})
async def delete_job(
    job_id: JobId, store: StoreDep, agents: AgentsDep,
    force: Annotated[bool, Query(description="delete even if the gpu node cannot purge the files")] = False,
) -> Response:
    """Delete a job: cancel it if open, purge its files on the gpu node, drop it and its history."""
    job = await run_in_threadpool(store.get_job, job_id)
    if not job.state.final:
        job = await run_in_threadpool(store.cancel, job_id)
    if job.node is not None:
        nodes = await run_in_threadpool(store.nodes_by_name, [job.node])
        if job.node in nodes:
            try:
                await agents.cancel_job(nodes[job.node].url, job_id, purge=True)
            except AgentError as exc:
                if not force:
                    raise _as_api_error(exc, f"gpu node {job.node}") from None
                log.warning("job %d deleted without purging its files on %s: %s", job_id, job.node, exc.message)
    await run_in_threadpool(store.delete_job, job_id)
    return Response(status_code=204)


@router.get("/{job_id}/events")
def list_job_events(job_id: JobId, store: StoreDep) -> EventsPublic:
    """The job's history: every change of state, node or attempt, with its time and message."""
    store.get_job(job_id)
    return EventsPublic(events=[EventPublic.of(e) for e in store.job_events(job_id)])


@router.get("/{job_id}/files/{name}", response_class=StreamingResponse, responses={200: {
    "description": "the file as the gpu node serves it",
    "content": {"application/octet-stream": {"example": "ply\nformat binary_little_endian 1.0\n…"}}}})
async def get_job_file(
    job_id: JobId, name: str, store: StoreDep, agents: AgentsDep,
    byte_range: Annotated[str | None, Header(alias="Range", max_length=200,
                                             description="bytes=… to resume a download")] = None,
) -> StreamingResponse:
    """Stream an artifact (reconstruction.ply, cameras.json, …) from the job's gpu node (``Range`` passed on)."""
    job = await run_in_threadpool(store.get_job, job_id)
    if name not in job.files or job.node is None:
        raise NotFound(f"job {job_id} has no file {name!r}")
    node = await run_in_threadpool(store.get_node, job.node)
    try:
        upstream = await agents.open_file(node.url, job_id, name, byte_range=byte_range)
    except AgentError as exc:
        raise _as_api_error(exc, f"gpu node {node.name}") from None
    # Agent files come from the dashboard's own origin: a hostile report.html or SVG opened
    # directly must not run scripts there (sandboxed).
    return relay(upstream, sandbox=True)


async def _stop_on_node(store: Store, agents: AgentClient, node_name: str, job_id: int) -> None:
    try:
        node = await run_in_threadpool(store.get_node, node_name)
        await agents.cancel_job(node.url, job_id)
    except (AgentError, NotFound) as exc:
        # The scheduler fences it when the node answers again (it runs a job the core cancelled).
        log.warning("job %d cancelled, but stopping it on %s failed: %s", job_id, node_name, exc)


async def _recording_videos(ref: RecordingRef, store: Store, agents: AgentClient) -> list[VideoRef]:
    """The chapters of a recording, in order; 422 if the node or recording is unknown."""
    node = (await run_in_threadpool(store.nodes_by_name, [ref.storage])).get(ref.storage)
    if node is None or node.role != NodeRole.storage:
        raise BadRequest(f"recording.storage: no storage node named {ref.storage!r}")
    try:
        found = await catalog.catalog_of(agents, node)
    except AgentError as exc:
        raise _as_api_error(exc, f"storage node {ref.storage}") from None
    recording = next((r for r in found.recordings if r.id == ref.id), None)
    if recording is None:
        raise BadRequest(f"recording.id: no recording {ref.id!r} on storage node {ref.storage!r}; "
                         "see GET /api/v1/recordings")
    return [VideoRef(storage=ref.storage, path=v.path) for v in recording.chapters]


async def _catalog_entries(
    videos: list[VideoRef], store: Store, agents: AgentClient
) -> dict[tuple[str, str], VideoInfo]:
    """The catalog entry of each video; 422 naming the first unknown node or path."""
    nodes = await run_in_threadpool(store.nodes_by_name, [v.storage for v in videos])
    for video in videos:
        node = nodes.get(video.storage)
        if node is None:
            raise BadRequest(f"unknown storage node {video.storage!r}; add it with POST /api/v1/nodes")
        if node.role != NodeRole.storage:
            raise BadRequest(f"node {video.storage!r} is a {node.role.value} node, not a storage node")
    names = sorted(nodes)
    answers = await asyncio.gather(*(agents.list_videos(nodes[n].url) for n in names), return_exceptions=True)
    catalogs: dict[str, dict[str, VideoInfo]] = {}
    for name, answer in zip(names, answers):
        if isinstance(answer, AgentError):
            raise _as_api_error(answer, f"storage node {name}")
        if isinstance(answer, BaseException):
            raise answer
        catalogs[name] = {info.path: info for info in answer.videos}
    found = {}
    for video in videos:
        info = catalogs[video.storage].get(video.path)
        if info is None:
            raise BadRequest(f"video {video.path!r} is not in the catalog of storage node {video.storage!r}")
        if info.error:
            raise BadRequest(f"video {video.path!r} on storage node {video.storage!r} cannot be read: {info.error}")
        found[(video.storage, video.path)] = info
    return found


def _as_api_error(exc: AgentError, who: str) -> ApiError:
    if isinstance(exc, AgentUnreachable):
        return ApiError(f"{who} is unreachable: {exc.message}; is its agent running?",
                        code="agent_unreachable", status_code=503)
    if isinstance(exc, AgentRequestError) and exc.status_code == 404:
        return NotFound(f"{who} does not have it: {exc.message}")
    return ApiError(f"{who} failed: {exc.message}", code="agent_error", status_code=502)
