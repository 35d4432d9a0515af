"""``/api/v1/jobs``: submit, list, inspect and cancel jobs, and download their artifacts."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from shared.errors import ApiError, BadRequest, NotFound
from shared.jobs import JobState
from shared.videos import VideoInfo

from services.core.agents import AgentClient, AgentError, AgentRequestError, AgentUnreachable
from services.core.api.deps import AgentsDep, StoreDep, TokenRequired
from services.core.models import JobCreate, JobPublic, JobsPublic, VideoRef
from services.core.scheduler import estimate_frames
from services.core.store import ACTIVE_STATES, NodeRole, Store

log = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[int, Path(ge=1, le=10_000_000)]

#: Headers of an artifact passed from the agent to the client.
_FILE_HEADERS = ("content-type", "content-length", "content-encoding", "content-disposition", "etag", "last-modified")


@router.post("", status_code=201, dependencies=[TokenRequired])
async def create_job(body: JobCreate, store: StoreDep, agents: AgentsDep) -> JobPublic:
    """Queue a job once every video is found in its storage node's catalog."""
    catalog = await _catalog_entries(body.videos, store, agents)
    frames = estimate_frames([catalog[(v.storage, v.path)].duration_s for v in body.videos],
                             body.fps, body.max_frames)
    job = await run_in_threadpool(
        store.create_job, videos=[(v.storage, v.path) for v in body.videos], backend=body.backend,
        fps=body.fps, width=body.width, max_frames=body.max_frames, frames_estimate=frames,
    )
    log.info("job %d queued: %d video(s), %s", job.id, len(body.videos), body.backend)
    return JobPublic.of(job, (await run_in_threadpool(store.videos_of, [job.id]))[job.id])


@router.get("")
def list_jobs(
    store: StoreDep,
    state: Annotated[list[JobState] | None, Query(description="only jobs in these states")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> JobsPublic:
    """Jobs, newest first, optionally filtered by state."""
    jobs, count = store.list_jobs(states=state, limit=limit, offset=offset)
    videos = store.videos_of(j.id for j in jobs)
    return JobsPublic(jobs=[JobPublic.of(j, videos[j.id]) for j in jobs], count=count)


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


@router.get("/{job_id}/files/{name}")
async def get_job_file(job_id: JobId, name: str, store: StoreDep, agents: AgentsDep) -> StreamingResponse:
    """Stream an artifact (reconstruction.ply, cameras.json, …) from the job's gpu node."""
    job = await run_in_threadpool(store.get_job, job_id)
    if name not in job.files or job.node is None:
        raise NotFound(f"job {job_id} has no file {name!r}")
    node = await run_in_threadpool(store.get_node, job.node)
    try:
        upstream = await agents.open_file(node.url, job_id, name)
    except AgentError as exc:
        raise _as_api_error(exc, f"gpu node {node.name}") from None
    headers = {k: v for k, v in upstream.headers.items() if k.lower() in _FILE_HEADERS}
    return StreamingResponse(upstream.aiter_raw(), headers=headers, background=BackgroundTask(upstream.aclose))


async def _stop_on_node(store: Store, agents: AgentClient, node_name: str, job_id: int) -> None:
    try:
        node = await run_in_threadpool(store.get_node, node_name)
        await agents.cancel_job(node.url, job_id)
    except (AgentError, NotFound) as exc:
        # The scheduler fences it when the node answers again (it runs a job the core cancelled).
        log.warning("job %d cancelled, but stopping it on %s failed: %s", job_id, node_name, exc)


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
