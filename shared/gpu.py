"""GPU agent wire models for ``GET /status``."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from shared.base import WireModel
from shared.jobs import AgentJob


class GpuInfo(WireModel):
    index: int = Field(ge=0)
    name: str
    uuid: str
    memory_total_mib: int = Field(ge=0)
    memory_used_mib: int = Field(ge=0)
    memory_free_mib: int = Field(ge=0)
    utilization_pct: int | None = Field(None, ge=0, le=100)
    temperature_c: int | None = None
    power_w: float | None = Field(None, ge=0)
    processes: list["GpuProcess"] = Field([], description="compute processes using this GPU")


class GpuProcess(WireModel):
    pid: int
    used_memory_mib: int | None = Field(None, ge=0)


class BackendInfo(WireModel):
    name: str
    available: bool
    device: str = Field(description="'gpu' or 'cpu'")
    reason: str | None = Field(None, description="why the backend cannot run here")


class ViewerInfo(WireModel):
    """A running viser viewer of one job, or of one stitch."""

    job_id: int | None = Field(None, description="the job shown (null for a stitch's viewer)")
    stitch_id: int | None = Field(None, description="the stitch shown (null for a job's viewer)")
    port: int = Field(ge=1, le=65535, description="the port the viewer really listens on")
    pid: int
    started_at: datetime
    idle_timeout_s: float = Field(description="it stops after this long with no browser connected")


class AgentStatus(WireModel):
    node_id: str
    gpus: list[GpuInfo]
    nvml_error: str | None = Field(None, description="why NVML could not be read, if it could not")
    backends: list[BackendInfo]
    cpu_load_1m: float
    cpu_count: int
    disk_free_mib: int
    ram_total_mib: int | None = Field(None, ge=0)
    ram_available_mib: int | None = Field(None, ge=0)
    jobs_running: int = Field(0, ge=0, description="jobs ingesting or reconstructing")
    jobs_waiting: int = Field(0, ge=0, description="jobs accepted, waiting for a slot")
    jobs: list[AgentJob]
    unknown_folders: list[str] = Field([], description="job folders without a readable state.json, left alone")
    viewers: list[ViewerInfo] = Field([], description="running viser viewers")


GpuInfo.model_rebuild()
