"""Request and response models of the core's REST API (``/api/v1``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit

from pydantic import Field, field_validator, model_validator

from shared.base import WireModel
from shared.gpu import AgentStatus
from shared.jobs import Backend, JobState

from services.core.store import Job, JobVideo, Node, NodeState

API_PREFIX = "/api/v1"

NodeName = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
               description="letters, digits, '.', '_' and '-'")
]


# -- nodes -----------------------------------------------------------------------------

class NodeCreate(WireModel):
    name: NodeName
    role: Literal["gpu", "storage"]
    url: Annotated[str, Field(min_length=1, max_length=2048, description="base URL of the agent")]

    @field_validator("url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. http://192.168.1.84:8300")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must be a base URL without query, fragment or credentials")
        try:
            parts.port
        except ValueError:
            raise ValueError("has an invalid port") from None
        return value.strip().rstrip("/")


class NodePublic(WireModel):
    name: str
    role: Literal["gpu", "storage"]
    url: str
    state: NodeState
    last_seen: datetime | None
    last_error: str | None
    active_jobs: int = Field(description="jobs placed on (gpu) or reading from (storage) this node")
    status: AgentStatus | None = Field(None, description="last status a gpu node reported")
    created_at: datetime

    @classmethod
    def of(cls, node: Node, active_jobs: int = 0) -> "NodePublic":
        status = AgentStatus.model_validate(node.last_status) if node.last_status else None
        return cls(name=node.name, role=node.role.value, url=node.url, state=node.state,
                   last_seen=node.last_seen, last_error=node.last_error, active_jobs=active_jobs,
                   status=status, created_at=node.created_at)


class NodesPublic(WireModel):
    nodes: list[NodePublic]


# -- jobs ------------------------------------------------------------------------------

class VideoRef(WireModel):
    storage: NodeName = Field(description="name of the storage node holding the video")
    path: Annotated[str, Field(min_length=1, max_length=4096, description="path in its catalog")]


class JobCreate(WireModel):
    """A job to submit; numbers have the bounds of :class:`shared.jobs.ExtractParams`."""

    videos: Annotated[list[VideoRef], Field(min_length=1, max_length=200, description="in order")]
    fps: Annotated[float, Field(gt=0, le=120, description="frames per second to sample")] = 2.0
    width: Annotated[int | None, Field(ge=32, le=7680, description="frame width in pixels")] = 640
    max_frames: Annotated[int | None, Field(ge=1, le=100_000, description="cap per video")] = None
    backend: Backend = "colmap"

    @model_validator(mode="after")
    def _distinct_videos(self) -> "JobCreate":
        seen: set[tuple[str, str]] = set()
        for video in self.videos:
            key = (video.storage, video.path)
            if key in seen:
                raise ValueError(f"video {video.path!r} on {video.storage!r} is listed twice")
            seen.add(key)
        return self


class JobPublic(WireModel):
    id: int
    state: JobState
    stage: str
    progress: float
    message: str
    error: str | None
    node: str | None
    attempt: int
    backend: Backend
    fps: float
    width: int | None
    max_frames: int | None
    frames_estimate: int | None
    videos: list[VideoRef]
    files: list[str] = Field(description="core URLs of the artifacts, streamed from the gpu node")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job, videos: list[JobVideo]) -> "JobPublic":
        return cls(
            id=job.id, state=job.state, stage=job.stage, progress=job.progress, message=job.message,
            error=job.error, node=job.node, attempt=job.attempt, backend=job.backend, fps=job.fps,
            width=job.width, max_frames=job.max_frames, frames_estimate=job.frames_estimate,
            videos=[VideoRef(storage=v.storage, path=v.path) for v in videos],
            files=[file_url(job.id, name) for name in job.files],
            created_at=job.created_at, updated_at=job.updated_at,
            started_at=job.started_at, finished_at=job.finished_at,
        )


class JobsPublic(WireModel):
    jobs: list[JobPublic]
    count: int = Field(description="jobs matching the filters, over all pages")


def file_url(job_id: int, name: str) -> str:
    return f"{API_PREFIX}/jobs/{job_id}/files/{quote(name, safe='')}"
