"""What the dashboard needs from the agents beyond the REST API: the job's QC report, its GLB
through the core, its 3D viewer (started on the gpu agent, opened on the agent's host), and
video thumbnails from the storage nodes."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote, urlsplit

import httpx
from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from shared.base import WireModel
from shared.errors import ApiError, BadRequest, NotFound
from shared.gpu import ViewerInfo
from shared.qc import QC_NAME, QcReport
from shared.videos import StorageStatus

from services.core.agents import AgentClient, AgentError
from services.core.api.deps import AgentsDep, JobId, StoreDep, TokenRequired
from services.core.models import ERROR_RESPONSES, NodeName, last_status
from services.core.store import Job, Node, NodeRole, NodeState, Store

log = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=ERROR_RESPONSES)
media_router = APIRouter(tags=["catalog"], responses=ERROR_RESPONSES)


#: The gpu agent's default viewer_base_port: job N's viewer listens on this + N.
VIEWER_BASE_PORT = 8100
#: qc.json larger than this is not shown (a real one is a few kB).
QC_MAX_BYTES = 4_000_000
#: Headers of an agent's file (GLB, PLY, report) passed on to the client.
_PASSED_HEADERS = ("content-type", "content-length", "content-encoding", "content-range", "accept-ranges",
                   "content-disposition", "etag", "last-modified")


@dataclass
class QcView:
    """The job's QC report for the page, or why there is none."""

    report: QcReport | None = None
    problem: str | None = None


async def load_qc(store: Store, agents: AgentClient, job: Job) -> QcView:
    """Read ``qc.json`` from the job's gpu node (through the same path as the file proxy)."""
    if QC_NAME not in job.files or job.node is None:
        return QcView()
    try:
        node = await run_in_threadpool(store.get_node, job.node)
        upstream = await agents.open_file(node.url, job.id, QC_NAME)
    except (AgentError, NotFound) as exc:
        return QcView(problem=f"qc.json could not be read from {job.node}: {getattr(exc, 'message', exc)}")
    try:
        body = b""
        async for chunk in upstream.aiter_raw():
            body += chunk
            if len(body) > QC_MAX_BYTES:
                return QcView(problem=f"qc.json is larger than {QC_MAX_BYTES} bytes; download it instead")
    except httpx.HTTPError as exc:
        return QcView(problem=f"qc.json could not be read from {job.node}: {exc}")
    finally:
        await upstream.aclose()
    try:
        return QcView(report=QcReport.model_validate(json.loads(body)))
    except (ValueError, ValidationError) as exc:
        return QcView(problem=f"qc.json is not a report this core understands: {str(exc)[:300]}")


async def storage_status(agents: AgentClient, node: Node) -> StorageStatus | None:
    """A storage node's disks and extractions now, or None if it does not say (quickly)."""
    if node.shown_state != NodeState.online:
        return None
    try:
        response = await agents.client.get(f"{node.url}/status", timeout=min(agents.poll_timeout_s, 2.0))
        response.raise_for_status()
        return StorageStatus.model_validate_json(response.content)
    except (httpx.HTTPError, ValidationError, ValueError) as exc:
        log.debug("no status from storage node %s: %s", node.name, exc)
        return None


def viewer_url(store: Store, job: Job) -> str | None:
    """Where job N's viewer is (or would be) on its gpu node: the running one's real port if
    the node reported it, else ``VIEWER_BASE_PORT + N``."""
    if job.node is None:
        return None
    try:
        node = store.get_node(job.node)
    except NotFound:
        return None
    status = last_status(node)
    port = next((v.port for v in status.viewers if v.job_id == job.id), None) if status else None
    return url_on_node(node.url, port or VIEWER_BASE_PORT + job.id)


def url_on_node(node_url: str, port: int) -> str:
    """``http://<the node's host>:<port>/``: where a viewer on that node is opened."""
    host = urlsplit(node_url).hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/"


@router.get("/{job_id}/reconstruction.glb", response_class=StreamingResponse, responses={200: {
    "description": "glTF 2.0 binary built by the gpu node (cached there)",
    "content": {"model/gltf-binary": {"example": "glTF\\x02\\x00\\x00\\x00…"}}}})
async def get_job_glb(
    job_id: JobId, store: StoreDep, agents: AgentsDep,
    safe: Annotated[bool, Query(description="light variant with fewer points")] = False,
) -> StreamingResponse:
    """The job's reconstruction as GLB, built on demand by its gpu node and streamed through the core."""
    node_url = await _node_url(store, job_id)
    url = f"{node_url}/jobs/{job_id}/reconstruction.glb"
    request = agents.client.build_request("GET", url, params={"safe": "true"} if safe else None,
                                          timeout=max(agents.request_timeout_s, 300.0))
    return await stream_from(agents, request)


class ViewerLink(WireModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"job_id": 7, "port": 8107, "url": "http://192.168.1.84:8107/"}]})

    job_id: int
    port: int = Field(description="the port the viewer really listens on")
    url: str = Field(description="open this in a browser on the LAN")


@router.post("/{job_id}/viewer", dependencies=[TokenRequired])
async def start_job_viewer(job_id: JobId, store: StoreDep, agents: AgentsDep) -> ViewerLink:
    """Start the job's 3D viewer on its gpu node; answers its URL on the node's host."""
    return await _job_viewer(store, agents, job_id, "POST")


@router.delete("/{job_id}/viewer", dependencies=[TokenRequired])
async def stop_job_viewer(job_id: JobId, store: StoreDep, agents: AgentsDep) -> ViewerLink:
    """Stop the job's 3D viewer on its gpu node (404 when none runs; it also stops by itself when idle)."""
    return await _job_viewer(store, agents, job_id, "DELETE")


async def _job_viewer(store: Store, agents: AgentClient, job_id: int, method: str) -> ViewerLink:
    node_url = await _node_url(store, job_id)
    request = agents.client.build_request(method, f"{node_url}/jobs/{job_id}/viewer")
    info = await read_viewer(await _send(agents, request))
    return ViewerLink(job_id=job_id, port=info.port, url=url_on_node(node_url, info.port))


async def stream_from(agents: AgentClient, request: httpx.Request, who: str = "the gpu node", *,
                      sandbox: bool = False) -> StreamingResponse:
    """``request`` sent to an agent, its answer streamed through (see :func:`relay`)."""
    return relay(await _send(agents, request, who), sandbox=sandbox)


def relay(upstream: httpx.Response, *, sandbox: bool = False) -> StreamingResponse:
    """An agent's streamed answer passed on: status, content and download headers (closed once
    sent); ``sandbox`` for files opened on the dashboard's origin, where they must not run
    scripts (they would carry the dashboard's token cookie)."""
    headers = {k: v for k, v in upstream.headers.items() if k.lower() in _PASSED_HEADERS}
    if sandbox:
        headers |= {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}
    return StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code, headers=headers,
                             background=BackgroundTask(upstream.aclose))


async def read_viewer(response: httpx.Response) -> ViewerInfo:
    """The viewer a gpu node answered (a streamed response, closed here)."""
    try:
        return ViewerInfo.model_validate_json(await response.aread())
    except ValidationError:
        raise ApiError("the gpu node answered a viewer this core does not understand", code="agent_error",
                       status_code=502) from None
    finally:
        await response.aclose()


@media_router.get("/videos/{storage}/{path:path}/thumbnail", response_class=Response, responses={200: {
    "description": "one JPEG from the storage node", "content": {"image/jpeg": {"example": "\\xff\\xd8\\xff…"}}}})
async def get_video_thumbnail(
    storage: NodeName, path: str, store: StoreDep, agents: AgentsDep,
    t: Annotated[float | None, Query(ge=0, le=86_400, description="seconds in (default: 10% in)")] = None,
    width: Annotated[int, Query(ge=32, le=1920)] = 320,
) -> Response:
    """A thumbnail of a video, made by its storage node (the video itself never leaves it)."""
    node = (await run_in_threadpool(store.nodes_by_name, [storage])).get(storage)
    if node is None or node.role != NodeRole.storage:
        raise NotFound(f"no storage node named {storage!r}")
    params = {"width": width, **({"t": t} if t is not None else {})}
    request = agents.client.build_request("GET", f"{node.url}/videos/{quote(path, safe='/')}/thumbnail",
                                          params=params)
    response = await _send(agents, request, f"storage node {storage}")
    try:
        jpeg = await response.aread()
    finally:
        await response.aclose()
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})


async def _node_url(store: Store, job_id: int) -> str:
    job = await run_in_threadpool(store.get_job, job_id)
    if job.node is None:
        raise NotFound(f"job {job_id} is not placed on a gpu node")
    return (await run_in_threadpool(store.get_node, job.node)).url


async def _send(agents: AgentClient, request: httpx.Request, who: str = "the gpu node") -> httpx.Response:
    try:
        response = await agents.client.send(request, stream=True)
    except httpx.TransportError as exc:
        raise ApiError(f"{who} is unreachable: {exc or type(exc).__name__}; is its agent running?",
                       code="agent_unreachable", status_code=503) from None
    if response.is_error:
        await response.aread()
        await response.aclose()
        try:
            message = str(response.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = response.text[:200] or response.reason_phrase
        if response.status_code == 404:
            raise NotFound(f"{who} does not have it: {message}")
        if response.status_code == 422:
            raise BadRequest(f"{who} cannot make it: {message}")
        raise ApiError(f"{who} failed: {message}", code="agent_error", status_code=502)
    return response
