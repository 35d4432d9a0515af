"""``frames.json`` in a job folder: where each ingested frame came from.

Written atomically by the gpu agent after each video is complete (before ``.video_i.done``),
read by the reconstruction backends to fill the ``source`` of each camera.
"""

from __future__ import annotations

from pydantic import Field

from shared.base import WireModel

FRAMES_INDEX_NAME = "frames.json"
FRAME_NAME_FORMAT = "frame_{:06d}.jpg"


class IndexedVideo(WireModel):
    index: int = Field(ge=0)
    path: str
    native_width: int | None = None
    native_height: int | None = None


class IndexedFrame(WireModel):
    name: str
    index: int = Field(ge=1, description="frame number across all videos of the job, from 1")
    video: int = Field(ge=0)
    t_s: float = Field(ge=0, description="timestamp within its video")


class FrameIndex(WireModel):
    videos: list[IndexedVideo] = []
    frames: list[IndexedFrame] = []
