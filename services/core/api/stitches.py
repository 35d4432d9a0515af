"""``/api/v1/stitches``: merge finished jobs into one cloud on the gpu node holding most of them,
then download the result (files, GLB) and look at it (viewer) through the core, like a job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from services.core import stitches
from services.core.api.dashboard import _send, read_viewer, stream_from, url_on_node
from services.core.api.deps import AgentsDep, StitchId, StoreDep, TokenRequired
from services.core.models import ERROR_RESPONSES
from shared.errors import NotFound
from shared.stitches import StitchCreate, StitchPublic, StitchViewerLink

router = APIRouter(prefix="/stitches", tags=["stitches"], responses=ERROR_RESPONSES)


@router.post("", status_code=201, dependencies=[TokenRequired])
async def create_stitch(body: StitchCreate, store: StoreDep, agents: AgentsDep) -> StitchPublic:
    """Stitch finished jobs (the first is the reference frame) on the node that holds most of them."""
    return await stitches.create(store, agents, body)


@router.get("")
def list_stitches(store: StoreDep) -> list[StitchPublic]:
    """Every stitch, oldest first."""
    return stitches.list_all(store)


@router.get("/{stitch_id}")
async def get_stitch(stitch_id: StitchId, store: StoreDep, agents: AgentsDep) -> StitchPublic:
    """One stitch; while it runs, its node is asked for its progress, and once done for its report."""
    return await stitches.get(store, agents, stitch_id)


@router.get("/{stitch_id}/files/{name}", response_class=StreamingResponse, responses={200: {
    "description": "the file as the gpu node serves it (sandboxed: it shares the dashboard's origin)",
    "content": {"application/octet-stream": {"example": "ply\nformat binary_little_endian 1.0\n…"}}}})
async def get_stitch_file(
    stitch_id: StitchId, name: str, store: StoreDep, agents: AgentsDep,
    byte_range: Annotated[str | None, Header(alias="Range", max_length=200,
                                             description="bytes=… to resume a download")] = None,
) -> StreamingResponse:
    """Stream a file of a finished stitch (stitch_K.ply, stitch_K.json, stitch_K_cameras.json) from its node."""
    stitch, node = await run_in_threadpool(stitches.located, store, stitch_id)
    if name not in stitch.files:
        raise NotFound(f"stitch {stitch_id} has no file {name!r}" + (f"; it has {', '.join(stitch.files)}"
                                                                   if stitch.files else " (yet)"))
    request = agents.client.build_request("GET", f"{node.url}/stitches/{stitch_id}/files/{name}",
                                          headers={"Range": byte_range} if byte_range else None)
    return await stream_from(agents, request, f"gpu node {node.name}", sandbox=True)


@router.get("/{stitch_id}/stitch.glb", response_class=StreamingResponse, responses={200: {
    "description": "glTF 2.0 binary built by the gpu node (cached there): the cloud and each job's cameras",
    "content": {"model/gltf-binary": {"example": "glTF\\x02\\x00\\x00\\x00…"}}}})
async def get_stitch_glb(
    stitch_id: StitchId, store: StoreDep, agents: AgentsDep,
    safe: Annotated[bool, Query(description="light variant with fewer points")] = False,
) -> StreamingResponse:
    """The stitch as GLB (every job's cameras in its own colour), built on demand by its gpu node."""
    _, node = await run_in_threadpool(stitches.located, store, stitch_id)
    request = agents.client.build_request("GET", f"{node.url}/stitches/{stitch_id}/stitch.glb",
                                          params={"safe": "true"} if safe else None,
                                          timeout=max(agents.request_timeout_s, 300.0))
    return await stream_from(agents, request, f"gpu node {node.name}")


@router.post("/{stitch_id}/viewer", dependencies=[TokenRequired])
async def start_stitch_viewer(stitch_id: StitchId, store: StoreDep, agents: AgentsDep) -> StitchViewerLink:
    """Start the stitch's 3D viewer on its gpu node; answers its URL on the node's host."""
    return await _viewer(store, agents, stitch_id, "POST")


@router.delete("/{stitch_id}/viewer", dependencies=[TokenRequired])
async def stop_stitch_viewer(stitch_id: StitchId, store: StoreDep, agents: AgentsDep) -> StitchViewerLink:
    """Stop the stitch's 3D viewer on its gpu node (404 when none runs)."""
    return await _viewer(store, agents, stitch_id, "DELETE")


async def _viewer(store, agents, stitch_id: int, method: str) -> StitchViewerLink:
    _, node = await run_in_threadpool(stitches.located, store, stitch_id)
    request = agents.client.build_request(method, f"{node.url}/stitches/{stitch_id}/viewer")
    info = await read_viewer(await _send(agents, request, f"gpu node {node.name}"))
    return StitchViewerLink(stitch_id=stitch_id, port=info.port, url=url_on_node(node.url, info.port))
