"""Job wire models: the spec the core pushes to a gpu agent and the state the agent reports."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Literal

from pydantic import Field

from shared.base import WireModel
from shared.qc import QcOptions


class JobState(str, Enum):
    queued = "queued"
    assigned = "assigned"
    extracting = "extracting"
    reconstructing = "reconstructing"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.done, JobState.failed, JobState.cancelled)


#: ``auto``: the agent runs lingbot when it can and a GPU has room, else colmap.
Backend = Literal["colmap", "lingbot", "auto"]


class ExtractParams(WireModel):
    """Frame sampling for every video of a job (see :class:`shared.videos.FrameParams`)."""

    fps: Annotated[float, Field(gt=0, le=120)] = 2.0
    width: Annotated[int | None, Field(ge=32, le=7680)] = 640
    max_frames: Annotated[int | None, Field(ge=1, le=100_000)] = None
    keyframes: bool = Field(False, description="decode key frames only (fast previews; fps is then an upper bound)")


#: An agent's base URL: http(s), a host, an optional path; no spaces or control characters.
HTTP_URL_PATTERN = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"


class VideoSource(WireModel):
    storage_url: Annotated[str, Field(min_length=1, max_length=2048, pattern=HTTP_URL_PATTERN,
                                      description="base URL of the storage agent, http(s)://host:port")]
    path: Annotated[str, Field(min_length=1, max_length=4096)]


class JobSpec(WireModel):
    """``PUT /jobs/{job_id}`` on a gpu agent. Idempotent: repeating it is harmless."""

    job_id: Annotated[int, Field(ge=1, le=10_000_000)]
    attempt: Annotated[int, Field(ge=1, le=1000)] = 1
    videos: Annotated[list[VideoSource], Field(min_length=1, max_length=200)]
    extract: ExtractParams = ExtractParams()
    backend: Backend = "colmap"
    gpu_index: Annotated[int | None, Field(ge=0, le=63, description="GPU the core counted the job against")] = None
    qc: QcOptions | None = Field(None, description="QC thresholds and frame filter; unset: the agent's settings")


class AgentJob(WireModel):
    """A job as a gpu agent sees it (``GET /jobs/{job_id}``, and in ``state.json``)."""

    job_id: int
    attempt: int
    spec: JobSpec
    state: JobState
    stage: str
    progress: float = Field(ge=0, le=1)
    message: str = ""
    error: str | None = None
    frames: int = 0
    videos_done: int = 0
    files: list[str] = []
    runner_pid: int | None = Field(None, description="pid of the running backend process, if any")
    backend_used: str | None = Field(None, description="the backend that ran (resolves 'auto')")
    streaming: bool = Field(False, description="the backend started while frames were still landing")
    ingest_progress: float | None = Field(None, ge=0, le=1, description="frames pulled, 0..1 (None before the ingest)")
    reconstruct_progress: float | None = Field(None, ge=0, le=1, description="backend's progress, 0..1 (None before it starts)")
    created_at: datetime
    updated_at: datetime
