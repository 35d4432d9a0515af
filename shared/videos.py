"""Storage agent wire models: the video catalog and frame-extraction parameters.

Frames travel as an uncompressed tar stream (``application/x-tar``), read incrementally:

* one member per frame, ``frame_%06d.jpg`` numbered from 1 within the video, with the pax
  header ``COSMA.t_s`` holding its timestamp in seconds from the start of the video;
* a last member ``end.json`` (:class:`StreamEnd`) saying whether ffmpeg finished cleanly.

A stream without ``end.json`` was cut off and must not be trusted.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from shared.base import WireModel

VIDEO_EXTENSIONS = (".mp4", ".mov")
TAR_TIMESTAMP_KEY = "COSMA.t_s"
STREAM_END_NAME = "end.json"


class VideoInfo(WireModel):
    path: str = Field(description="path relative to its storage root, '/'-separated")
    root: int = Field(ge=0, description="index of the storage root holding the file")
    size_bytes: int = Field(ge=0)
    mtime: float
    duration_s: float | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    codec: str | None = None
    error: str | None = Field(None, description="why ffprobe could not read the file")
    variable_fps: bool | None = Field(None, description="frame rate varies (average differs from the base rate)")
    rotation_deg: int | None = Field(None, description="display rotation in degrees (0, 90, 180, 270)")
    bit_rate_bps: int | None = Field(None, ge=0, description="video stream bit rate (else the file's)")
    creation_time: str | None = Field(None, description="creation time recorded by the camera (ISO 8601)")
    recording: str | None = Field(None, description="id of the recording this file is a chapter of (GoPro names)")
    chapter: int | None = Field(None, ge=1, description="chapter number within its recording, from 1")


class VideoList(WireModel):
    videos: list[VideoInfo]
    total: int | None = Field(None, ge=0, description="videos matching the filter, before paging")
    next_offset: int | None = Field(None, ge=0, description="offset of the next page; none on the last page")


class Recording(WireModel):
    """The chapters of one recording in order (GoPro names), or a single video on its own."""

    id: str = Field(description="folder, prefix and number (100GOPRO/GX0042), or the path of a lone video")
    gopro: bool
    root: int = Field(ge=0)
    chapters: list[str] = Field(description="video paths in chapter order")
    duration_s: float | None = Field(None, description="sum over the chapters; none if one is unknown")
    size_bytes: int = Field(ge=0)
    unreadable: list[str] = Field(default_factory=list, description="chapters ffprobe could not read")


class RecordingList(WireModel):
    recordings: list[Recording]


class FrameParams(WireModel):
    """How to sample frames from one video. Every number is bounded."""

    fps: Annotated[float, Field(gt=0, le=120, description="frames per second to sample")] = 2.0
    width: Annotated[
        int | None, Field(ge=32, le=7680, description="output width; height keeps the aspect")
    ] = None
    max_frames: Annotated[
        int | None, Field(ge=1, le=100_000, description="cap, spread evenly over the duration")
    ] = None
    start_s: Annotated[float, Field(ge=0, le=86_400)] = 0.0
    end_s: Annotated[float | None, Field(gt=0, le=86_400)] = None
    quality: Annotated[int, Field(ge=2, le=31, description="JPEG qscale, 2 best")] = 3
    keyframes: Annotated[
        bool, Field(description="key frames only (fast preview); fps and max_frames still thin them out")
    ] = False

    @model_validator(mode="after")
    def _end_after_start(self) -> "FrameParams":
        if self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")
        return self


class StreamEnd(WireModel):
    ok: bool
    frames: int = Field(ge=0)
    error: str | None = None


class RootStatus(WireModel):
    index: int = Field(ge=0)
    path: str
    disk_total_mib: int | None = Field(None, ge=0)
    disk_free_mib: int | None = Field(None, ge=0)
    error: str | None = Field(None, description="why the disk could not be read, e.g. not mounted")


class ThumbnailParams(WireModel):
    t: Annotated[
        float | None, Field(ge=0, le=86_400, description="seconds into the video; default 10% of its duration")
    ] = None
    width: Annotated[int, Field(ge=32, le=1920, description="output width; height keeps the aspect")] = 320


class ExtractionStatus(WireModel):
    """One frame extraction, running or waiting for a slot."""

    path: str
    state: Literal["running", "queued"]
    queue_position: int | None = Field(None, ge=1, description="1 = next to start; none when running")
    keyframes: bool = False
    frames: int = Field(0, ge=0, description="frames sent so far")
    expected_frames: int | None = Field(None, ge=0, description="what a healthy file yields, when known")
    progress: float | None = Field(None, ge=0, le=1, description="share of the time window read so far")
    elapsed_s: float = Field(0, ge=0)


class StorageStatus(WireModel):
    node_id: str
    roots: list[RootStatus]
    cpu_load_1m: float
    cpu_count: int
    extractions_running: int = Field(ge=0)
    extractions_max: int = Field(ge=1)
    extractions_queued: int = Field(0, ge=0)
    extractions: list[ExtractionStatus] = Field(default_factory=list, description="running, then queued in order")
