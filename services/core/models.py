"""Request and response models of the core's REST API (``/api/v1``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit

from pydantic import ConfigDict, Field, TypeAdapter, field_validator, model_validator
from typing_extensions import TypedDict

from shared.base import WireModel
from shared.gpu import AgentStatus
from shared.jobs import Backend, JobState

from services.core.store import Event, Job, JobVideo, Node, NodeState

API_PREFIX = "/api/v1"

NodeName = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
               description="letters, digits, '.', '_' and '-'")
]


# -- nodes -----------------------------------------------------------------------------

def _examples(*examples: dict) -> ConfigDict:
    """OpenAPI examples of a model (shown on every route that takes or returns it)."""
    return ConfigDict(extra="forbid", json_schema_extra={"examples": list(examples)})


_NODE_EXAMPLE = {"name": "gpu-84", "role": "gpu", "url": "http://192.168.1.84:8300"}


class NodeCreate(WireModel):
    model_config = _examples(_NODE_EXAMPLE, {"name": "z620", "role": "storage", "url": "http://192.168.1.168:8310"})

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


_NODE_PUBLIC_EXAMPLE = {
    **_NODE_EXAMPLE, "state": "online", "draining": False, "announced": False,
    "last_seen": "2026-06-01T10:00:05Z", "offline_since": None, "last_error": None, "active_jobs": 1,
    "status": None, "created_at": "2026-06-01T09:00:00Z",
}


class NodePublic(WireModel):
    model_config = _examples(_NODE_PUBLIC_EXAMPLE)

    name: str
    role: Literal["gpu", "storage"]
    url: str
    state: NodeState = Field(description="online, offline, unknown (not polled yet), or draining (online, "
                                         "finishing its jobs, getting no new ones)")
    draining: bool
    announced: bool = Field(description="the agent announced itself (rather than an operator adding it)")
    last_seen: datetime | None
    offline_since: datetime | None = Field(description="when it stopped answering, while offline")
    last_error: str | None
    active_jobs: int = Field(description="jobs placed on (gpu) or reading from (storage) this node")
    status: AgentStatus | None = Field(None, description="last status a gpu node reported")
    created_at: datetime

    @classmethod
    def of(cls, node: Node, active_jobs: int = 0) -> "NodePublic":
        return cls(name=node.name, role=node.role.value, url=node.url, state=node.shown_state,
                   draining=node.draining, announced=node.announced, last_seen=node.last_seen,
                   offline_since=node.offline_since, last_error=node.last_error, active_jobs=active_jobs,
                   status=last_status(node), created_at=node.created_at)


def last_status(node: Node) -> AgentStatus | None:
    """The node's last status, or None if there is none or it was stored by an older contract
    (the next poll replaces it)."""
    try:
        return AgentStatus.model_validate(node.last_status) if node.last_status else None
    except ValueError:
        return None


class NodesPublic(WireModel):
    model_config = _examples({"nodes": [_NODE_PUBLIC_EXAMPLE]})

    nodes: list[NodePublic]


# -- jobs ------------------------------------------------------------------------------

class VideoRef(WireModel):
    model_config = _examples({"storage": "z620", "path": "100GOPRO/GX010042.MP4"})

    storage: NodeName = Field(description="name of the storage node holding the video")
    path: Annotated[str, Field(min_length=1, max_length=4096, description="path in its catalog")]


class RecordingRef(WireModel):
    model_config = _examples({"storage": "z620", "id": "100GOPRO/GX0042"})

    storage: NodeName = Field(description="name of the storage node holding the recording")
    id: Annotated[str, Field(min_length=1, max_length=512, description="recording id from /api/v1/recordings")]


class JobCreate(WireModel):
    """A job to submit: its videos, or a GoPro recording (all its chapters, in order).

    Numbers have the bounds of :class:`shared.jobs.ExtractParams`.
    """

    model_config = _examples(
        {"videos": [{"storage": "z620", "path": "100GOPRO/GX010042.MP4"},
                    {"storage": "z620", "path": "100GOPRO/GX020042.MP4"}], "fps": 2, "backend": "lingbot"},
        {"recording": {"storage": "z620", "id": "100GOPRO/GX0042"}, "fps": 1, "width": 518,
         "backend": "lingbot", "priority": 10, "cpu_fallback": True},
    )

    videos: Annotated[list[VideoRef] | None, Field(min_length=1, max_length=200, description="in order")] = None
    recording: RecordingRef | None = Field(None, description="instead of videos: every chapter of a recording")
    fps: Annotated[float, Field(gt=0, le=120, description="frames per second to sample")] = 2.0
    width: Annotated[int | None, Field(ge=32, le=7680, description="frame width in pixels")] = 640
    max_frames: Annotated[int | None, Field(ge=1, le=100_000, description="cap per video")] = None
    backend: Backend = "colmap"
    priority: Annotated[int, Field(ge=-100, le=100, description="higher runs first; FIFO within a priority")] = 0
    cpu_fallback: bool = Field(False, description="run colmap on a CPU if the job fits on no GPU")

    @model_validator(mode="after")
    def _distinct_videos(self) -> "JobCreate":
        if (self.videos is None) == (self.recording is None):
            raise ValueError("give either videos or recording")
        seen: set[tuple[str, str]] = set()
        for video in self.videos or []:
            key = (video.storage, video.path)
            if key in seen:
                raise ValueError(f"video {video.path!r} on {video.storage!r} is listed twice")
            seen.add(key)
        return self


_JOB_EXAMPLE = {
    "id": 7, "state": "extracting", "stage": "extracting", "progress": 0.4, "message": "video 1 of 2",
    "error": None, "node": "gpu-84", "gpu_index": 0, "attempt": 1, "backend": "lingbot",
    "run_backend": "lingbot", "priority": 0, "cpu_fallback": False, "recording": "100GOPRO/GX0042",
    "fps": 2.0, "width": 518, "max_frames": None, "frames_estimate": 1200,
    "videos": [{"storage": "z620", "path": "100GOPRO/GX010042.MP4"}], "files": [],
    "created_at": "2026-06-01T10:00:00Z", "updated_at": "2026-06-01T10:02:00Z",
    "started_at": "2026-06-01T10:00:03Z", "finished_at": None,
}


class JobPublic(WireModel):
    model_config = _examples(_JOB_EXAMPLE)

    id: int
    state: JobState
    stage: str
    progress: float
    message: str
    error: str | None
    node: str | None
    gpu_index: int | None = Field(description="GPU of the node the core counted the job against")
    attempt: int
    backend: Backend
    run_backend: str | None = Field(description="backend of this placement (colmap if it fell back to the CPU)")
    priority: int
    cpu_fallback: bool
    recording: str | None
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
            error=job.error, node=job.node, gpu_index=job.gpu_index, attempt=job.attempt, backend=job.backend,
            run_backend=job.run_backend, priority=job.priority, cpu_fallback=job.cpu_fallback,
            recording=job.recording, fps=job.fps,
            width=job.width, max_frames=job.max_frames, frames_estimate=job.frames_estimate,
            videos=[VideoRef(storage=v.storage, path=v.path) for v in videos],
            files=[file_url(job.id, name) for name in job.files],
            created_at=job.created_at, updated_at=job.updated_at,
            started_at=job.started_at, finished_at=job.finished_at,
        )


    @classmethod
    def row_dict(cls, row: dict) -> dict:
        """A job as listed, from a row of :meth:`Store.list_job_rows` (its keys are this model's
        fields, in order): the stored file names made URLs, in place."""
        job_id = row["id"]
        row["files"] = [file_url(job_id, name) for name in row["files"] or ()]
        return row


class JobsPublic(WireModel):
    model_config = _examples({"jobs": [_JOB_EXAMPLE], "count": 1, "next_cursor": None})

    jobs: list[JobPublic]
    count: int = Field(description="jobs matching the filters, over all pages")
    next_cursor: int | None = Field(None, description="pass as ?cursor= for the next page; none on the last")


class _VideoDict(TypedDict):
    storage: str
    path: str


def _page_serializer() -> TypeAdapter:
    """Serializes a page of :meth:`JobPublic.row_dict` dicts as :class:`JobsPublic` would, without
    validating them first (they come from the store's own columns): a third of the CPU time of
    a list went into validating 50 jobs into models only to dump them again."""
    fields = {name: field.annotation for name, field in JobPublic.model_fields.items()}
    fields["videos"] = list[_VideoDict]  # the one nested model
    job = TypedDict("JobDict", fields)  # type: ignore[misc]
    return TypeAdapter(TypedDict("JobsPage", {"jobs": list[job], "count": int,  # type: ignore[misc, valid-type]
                                              "next_cursor": int | None}))


#: ``JOBS_PAGE.dump_json({"jobs": [row_dict(...), …], "count": …, "next_cursor": …})``: the JSON
#: of a :class:`JobsPublic` (tests/core/test_core_jobs_api.py checks they are the same bytes).
JOBS_PAGE = _page_serializer()


_EVENT_EXAMPLE = {"id": 42, "at": "2026-06-01T10:05:00Z", "kind": "job", "job_id": 7, "node": "gpu-84",
                  "state": "queued", "attempt": 2,
                  "message": "gpu-84 did not answer for 30 s; requeued as attempt 2 of 3"}


class EventPublic(WireModel):
    model_config = _examples(_EVENT_EXAMPLE)

    id: int
    at: datetime
    kind: Literal["job", "node"]
    job_id: int | None
    node: str | None
    state: str = Field(description="the job's or node's state after the change ('deleted', 'removed' too)")
    attempt: int | None
    message: str

    @classmethod
    def of(cls, event: Event) -> "EventPublic":
        return cls(id=event.id, at=event.at, kind=event.kind, job_id=event.job_id, node=event.node,
                   state=event.state, attempt=event.attempt, message=event.message)


class EventsPublic(WireModel):
    model_config = _examples({"events": [_EVENT_EXAMPLE]})

    events: list[EventPublic]


# -- catalog -----------------------------------------------------------------------------

_VIDEO_EXAMPLE = {"storage": "z620", "path": "100GOPRO/GX010042.MP4", "recording": "100GOPRO/GX0042",
                  "chapter": 1, "size_bytes": 4_000_000_000, "mtime": 1780000000.0, "duration_s": 530.2,
                  "fps": 29.97, "width": 3840, "height": 2160, "codec": "hevc", "error": None}


class CatalogVideo(WireModel):
    model_config = _examples(_VIDEO_EXAMPLE)

    storage: str
    path: str
    recording: str = Field(description="id of the recording this file is a chapter of")
    chapter: int = Field(ge=1)
    size_bytes: int
    mtime: float
    duration_s: float | None
    fps: float | None
    width: int | None
    height: int | None
    codec: str | None
    error: str | None


class StorageError(WireModel):
    storage: str
    message: str


class VideosPublic(WireModel):
    model_config = _examples({"videos": [_VIDEO_EXAMPLE], "errors": []})

    videos: list[CatalogVideo]
    errors: list[StorageError] = Field(description="storage nodes that could not be listed, and why")


_RECORDING_EXAMPLE = {"storage": "z620", "id": "100GOPRO/GX0042", "gopro": True,
                      "chapters": ["100GOPRO/GX010042.MP4", "100GOPRO/GX020042.MP4"],
                      "duration_s": 1060.4, "size_bytes": 8_000_000_000, "unreadable": []}


class RecordingPublic(WireModel):
    model_config = _examples(_RECORDING_EXAMPLE)

    storage: str
    id: str
    gopro: bool = Field(description="named like a GoPro recording (else one file on its own)")
    chapters: list[str] = Field(description="video paths in chapter order")
    duration_s: float | None = Field(description="sum over the chapters; none if one is unknown")
    size_bytes: int
    unreadable: list[str] = Field(description="chapters ffprobe could not read")


class RecordingsPublic(WireModel):
    model_config = _examples({"recordings": [_RECORDING_EXAMPLE], "errors": []})

    recordings: list[RecordingPublic]
    errors: list[StorageError]


def file_url(job_id: int, name: str) -> str:
    return f"{API_PREFIX}/jobs/{job_id}/files/{quote(name, safe='')}"


def _error(code: str, message: str, description: str) -> dict:
    from shared.errors import ErrorBody

    return {"model": ErrorBody, "description": description,
            "content": {"application/json": {"example": {"error": {"code": code, "message": message}}}}}


#: Typed error answers of the core's routes, with examples, for the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict] = {
    401: _error("unauthorized", "missing bearer token: send 'Authorization: Bearer <cluster token>'",
                "a write without the cluster token"),
    404: _error("not_found", "no job 999", "unknown id or name"),
    409: _error("conflict", "job 7 is extracting; only failed or cancelled jobs can be retried",
                "the resource is not in a state that allows this"),
    422: _error("invalid", "videos.0.path: Field required", "invalid input; the message names the field"),
}
