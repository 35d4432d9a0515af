"""Storage agent wire models: the video catalog and frame-extraction parameters.

Frames travel as an uncompressed tar stream (``application/x-tar``), read incrementally:

* one member per frame, ``frame_%06d.jpg`` numbered from 1 within the video, with the pax
  header ``COSMA.t_s`` holding its timestamp in seconds from the start of the video;
* a last member ``end.json`` (:class:`StreamEnd`) saying whether ffmpeg finished cleanly.

A stream without ``end.json`` was cut off and must not be trusted.
"""

from __future__ import annotations

from typing import Annotated

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


class VideoList(WireModel):
    videos: list[VideoInfo]


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


class StorageStatus(WireModel):
    node_id: str
    roots: list[RootStatus]
    cpu_load_1m: float
    cpu_count: int
    extractions_running: int = Field(ge=0)
    extractions_max: int = Field(ge=1)
