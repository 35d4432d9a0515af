"""What people do with finished jobs: download them (PLY, GLB), look at them (viewers), stitch them."""

from __future__ import annotations

import contextlib
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import FileResponse

from services.gpu_agent.api.routes import ManagerDep
from services.gpu_agent.glb import (
    PLY_NAME,
    SAFE_MAX_POINTS,
    GlbCache,
    GlbInputsMissing,
    GlbOptions,
)
from services.gpu_agent.stitch import StitchManager
from services.gpu_agent.viewer import ViewerManager
from shared.errors import BadRequest, NotFound
from shared.gpu import ViewerInfo
from shared.stitches import StitchSpec, StitchState


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    # Entered after the app's own lifespan, so the job manager exists already.
    app.state.glb = GlbCache()
    manager = app.state.manager
    app.state.viewers = ViewerManager(manager.settings)
    app.state.stitches = StitchManager(manager.root, manager.token, threads=manager.settings.backend_threads)
    try:
        yield
    finally:
        await app.state.stitches.stop()
        await app.state.viewers.stop_all()


router = APIRouter(lifespan=lifespan)


def get_glb(request: Request) -> GlbCache:
    return request.app.state.glb


GlbDep = Annotated[GlbCache, Depends(get_glb)]


def get_viewers(request: Request) -> ViewerManager:
    return request.app.state.viewers


ViewersDep = Annotated[ViewerManager, Depends(get_viewers)]


def get_stitches(request: Request) -> StitchManager:
    return request.app.state.stitches


StitchesDep = Annotated[StitchManager, Depends(get_stitches)]


@router.get("/jobs/{job_id}/reconstruction.glb")
async def get_reconstruction_glb(
    job_id: int,
    manager: ManagerDep,
    glb: GlbDep,
    frustums: Annotated[bool, Query(description="draw the cameras as frustums")] = True,
    max_points: Annotated[int | None, Query(ge=1, le=100_000_000, description="cap on points")] = None,
    safe: Annotated[bool, Query(description=f"light variant: at most {SAFE_MAX_POINTS} points")] = False,
) -> FileResponse:
    """The reconstruction as glTF 2.0 binary, built on demand and cached beside its inputs."""
    manager.get(job_id)
    if safe:
        max_points = min(max_points or SAFE_MAX_POINTS, SAFE_MAX_POINTS)
    options = GlbOptions(frustums=frustums, max_points=max_points)
    try:
        path = await glb.get(manager.job_dir(job_id), options)
    except GlbInputsMissing as exc:
        raise NotFound(str(exc), code="no_reconstruction") from None
    except ValueError as exc:  # a malformed PLY or cameras.json
        raise BadRequest(f"job {job_id}: cannot export its reconstruction: {exc}", code="bad_reconstruction") from None
    return FileResponse(path, media_type="model/gltf-binary", filename=f"job_{job_id}_{path.name}")


@router.get("/jobs/{job_id}/reconstruction.ply")
async def get_reconstruction_ply(job_id: int, manager: ManagerDep) -> FileResponse:
    """The full point cloud (binary PLY); HTTP Range requests resume a large download."""
    manager.get(job_id)
    path = manager.job_dir(job_id) / PLY_NAME
    if not path.is_file():
        raise NotFound(f"job {job_id} has no {PLY_NAME} (yet)", code="no_reconstruction")
    return FileResponse(path, media_type="application/octet-stream", filename=f"job_{job_id}_{PLY_NAME}")


@router.post("/jobs/{job_id}/viewer")
async def start_viewer(job_id: int, manager: ManagerDep, viewers: ViewersDep, response: Response) -> ViewerInfo:
    """Start the job's viser viewer on ``viewer_base_port + job_id`` (201), or return the running one (200)."""
    manager.get(job_id)
    info, started = await viewers.start(job_id, manager.job_dir(job_id))
    response.status_code = 201 if started else 200
    return info


@router.delete("/jobs/{job_id}/viewer")
async def stop_viewer(job_id: int, viewers: ViewersDep) -> ViewerInfo:
    """Stop the job's viewer and free its port."""
    return await viewers.stop(job_id)


@router.put("/stitches/{stitch_id}")
async def put_stitch(stitch_id: int, spec: StitchSpec, stitches: StitchesDep, response: Response) -> StitchState:
    """Merge jobs (from any agents) into ``stitch_K.ply`` in the first job's frame; 202 while it runs."""
    state, started = stitches.put(stitch_id, spec)
    response.status_code = 202 if started else 200
    return state


@router.get("/stitches/{stitch_id}")
async def get_stitch(stitch_id: int, stitches: StitchesDep) -> StitchState:
    """A stitch's state; once done, its report (``stitch_K.json``): per job the similarity and residuals."""
    return stitches.get(stitch_id)
