"""What people do with finished jobs and stitches: download them (PLY, GLB), look at them
(viewers), stitch them. Jobs and stitches share the GLB cache and the viewers."""

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
    GlbSource,
)
from services.gpu_agent.stitch import StitchManager
from services.gpu_agent.viewer import Shown, ViewerManager
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
    app.state.stitches.load()
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


def glb_options(
    frustums: Annotated[bool, Query(description="draw the cameras as frustums")] = True,
    max_points: Annotated[int | None, Query(ge=1, le=100_000_000, description="cap on points")] = None,
    safe: Annotated[bool, Query(description=f"light variant: at most {SAFE_MAX_POINTS} points")] = False,
) -> GlbOptions:
    if safe:
        max_points = min(max_points or SAFE_MAX_POINTS, SAFE_MAX_POINTS)
    return GlbOptions(frustums=frustums, max_points=max_points)


GlbOptionsDep = Annotated[GlbOptions, Depends(glb_options)]


async def _glb_response(glb: GlbCache, source: GlbSource, options: GlbOptions, prefix: str) -> FileResponse:
    try:
        path = await glb.get(source, options)
    except GlbInputsMissing as exc:
        raise NotFound(str(exc), code="no_reconstruction") from None
    except ValueError as exc:  # a malformed PLY or cameras file
        raise BadRequest(f"{source.what}: cannot export it: {exc}", code="bad_reconstruction") from None
    return FileResponse(path, media_type="model/gltf-binary", filename=f"{prefix}{path.name}")


def _ply_response(path, what: str, filename: str) -> FileResponse:
    if not path.is_file():
        raise NotFound(f"{what} has no {path.name} (yet)", code="no_reconstruction")
    return FileResponse(path, media_type="application/octet-stream", filename=filename)


@router.get("/jobs/{job_id}/reconstruction.glb")
async def get_reconstruction_glb(job_id: int, manager: ManagerDep, glb: GlbDep, options: GlbOptionsDep) -> FileResponse:
    """The reconstruction as glTF 2.0 binary, built on demand and cached beside its inputs."""
    manager.get(job_id)
    return await _glb_response(glb, GlbSource.of_job(manager.job_dir(job_id)), options, f"job_{job_id}_")


@router.get("/jobs/{job_id}/reconstruction.ply")
async def get_reconstruction_ply(job_id: int, manager: ManagerDep) -> FileResponse:
    """The full point cloud (binary PLY); HTTP Range requests resume a large download."""
    manager.get(job_id)
    return _ply_response(manager.job_dir(job_id) / PLY_NAME, f"job {job_id}", f"job_{job_id}_{PLY_NAME}")


@router.post("/jobs/{job_id}/viewer")
async def start_viewer(job_id: int, manager: ManagerDep, viewers: ViewersDep, response: Response) -> ViewerInfo:
    """Start the job's viser viewer on ``viewer_base_port + job_id`` (201), or return the running one (200)."""
    manager.get(job_id)
    info, started = await viewers.start(Shown.of_job(job_id, manager.job_dir(job_id)))
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


@router.get("/stitches/{stitch_id}/stitch.glb")
async def get_stitch_glb(stitch_id: int, stitches: StitchesDep, glb: GlbDep, options: GlbOptionsDep) -> FileResponse:
    """The stitched cloud and every job's cameras (one colour a job) as glTF 2.0 binary, built on demand."""
    stitches.done(stitch_id)
    return await _glb_response(glb, GlbSource.of_stitch(stitches.root, stitch_id), options, "")


@router.get("/stitches/{stitch_id}/stitch.ply")
async def get_stitch_ply(stitch_id: int, stitches: StitchesDep) -> FileResponse:
    """The stitched point cloud (binary PLY); HTTP Range requests resume a large download."""
    report = stitches.done(stitch_id)
    return _ply_response(stitches.root / report.ply, f"stitch {stitch_id}", report.ply)


@router.get("/stitches/{stitch_id}/files/{name}")
async def get_stitch_file(stitch_id: int, name: str, stitches: StitchesDep) -> FileResponse:
    """One file of a finished stitch: ``stitch_K.ply``, ``stitch_K.json`` or ``stitch_K_cameras.json``."""
    report = stitches.done(stitch_id)
    if name not in report.files():
        raise NotFound(f"stitch {stitch_id} has no file {name!r}; it has {', '.join(report.files())}")
    path = stitches.root / name
    if not path.is_file():
        raise NotFound(f"stitch {stitch_id}: {name} is gone from the work root", code="no_stitch_result")
    return FileResponse(path, filename=name)


@router.post("/stitches/{stitch_id}/viewer")
async def start_stitch_viewer(stitch_id: int, stitches: StitchesDep, viewers: ViewersDep,
                              response: Response) -> ViewerInfo:
    """Start the stitch's viser viewer on ``stitch_viewer_base_port + stitch_id`` (201), or return the running one (200)."""
    stitches.done(stitch_id)
    info, started = await viewers.start(Shown.of_stitch(stitch_id, stitches.root))
    response.status_code = 201 if started else 200
    return info


@router.delete("/stitches/{stitch_id}/viewer")
async def stop_stitch_viewer(stitch_id: int, viewers: ViewersDep) -> ViewerInfo:
    """Stop the stitch's viewer and free its port."""
    return await viewers.stop(stitch_id, kind="stitch")
