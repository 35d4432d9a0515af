"""The gpu agent's control API: status, jobs and their files."""

from __future__ import annotations

import os
import re
import shutil
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse

from shared.errors import NotFound
from shared.gpu import AgentStatus
from shared.jobs import AgentJob, JobSpec

from services.gpu_agent.backends import available_backends
from services.gpu_agent.jobs import JobManager

router = APIRouter()

#: Files of a job folder that may be downloaded: outputs and frames, never a path.
SERVABLE_FILE_RE = re.compile(r"^(?:[A-Za-z0-9_-]+\.(?:ply|json|glb|csv|txt|svg|html)|frame_\d{6}\.jpg)$")


def get_manager(request: Request) -> JobManager:
    return request.app.state.manager


ManagerDep = Annotated[JobManager, Depends(get_manager)]


def _meminfo_mib() -> dict[str, int]:
    """MemTotal and MemAvailable from /proc/meminfo, in MiB (empty where there is no /proc)."""
    out = {}
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    out[key] = int(rest.split()[0]) // 1024
    except OSError:
        pass
    return out


@router.get("/status")
async def get_status(request: Request, manager: ManagerDep) -> AgentStatus:
    """GPUs (through NVML), CPU load, free disk and the jobs of this agent."""
    gpus, nvml_error = request.app.state.probe.read()
    disk = shutil.disk_usage(manager.root)
    ram = _meminfo_mib()
    return AgentStatus(
        node_id=manager.settings.node_id,
        gpus=gpus,
        nvml_error=nvml_error,
        backends=available_backends(gpus, lingbot_python=manager.settings.lingbot_python,
                                    lingbot_checkpoint=manager.settings.lingbot_checkpoint),
        cpu_load_1m=os.getloadavg()[0],
        cpu_count=os.cpu_count() or 1,
        disk_free_mib=disk.free // (1024 * 1024),
        ram_total_mib=ram.get("MemTotal"),
        ram_available_mib=ram.get("MemAvailable"),
        jobs_running=sum(1 for j in manager.jobs.values() if not j.state.final and j.job_id not in manager.waiting),
        jobs_waiting=len(manager.waiting),
        jobs=list(manager.jobs.values()),
        unknown_folders=list(manager.unknown_folders),
        viewers=request.app.state.viewers.list(),
    )


@router.get("/jobs")
async def list_jobs(manager: ManagerDep) -> list[AgentJob]:
    """Every job this agent holds."""
    return list(manager.jobs.values())


@router.put("/jobs/{job_id}")
async def put_job(job_id: int, spec: JobSpec, manager: ManagerDep, response: Response) -> AgentJob:
    """Start or resume a job; repeating the same command is harmless, an older attempt is refused (409)."""
    job, created = await manager.put(job_id, spec)
    response.status_code = 201 if created else 200
    return job


@router.get("/jobs/{job_id}")
async def get_job(job_id: int, manager: ManagerDep) -> AgentJob:
    """State, stage, progress and error of one job."""
    return manager.get(job_id)


@router.delete("/jobs/{job_id}", status_code=200)
async def cancel_job(
    job_id: int, manager: ManagerDep, request: Request,
    purge: Annotated[bool, Query(description="also delete its folder")] = False,
) -> AgentJob | None:
    """Cancel a job (its backend's process group is stopped); ``purge=true`` also deletes its files."""
    if purge:
        await request.app.state.viewers.stop_quietly(job_id)  # it would show deleted files
    return await manager.cancel(job_id, purge=purge)


@router.get("/jobs/{job_id}/files/{name}")
async def get_job_file(job_id: int, name: str, manager: ManagerDep) -> FileResponse:
    """Download one output of a job (``reconstruction.ply``, ``cameras.json``, a frame, …)."""
    manager.get(job_id)
    if not SERVABLE_FILE_RE.match(name):
        raise NotFound(f"{name!r} is not a file a job can serve")
    path = manager.job_dir(job_id) / name
    if not path.is_file():
        raise NotFound(f"job {job_id} has no file {name} (yet)")
    return FileResponse(path, filename=name)
