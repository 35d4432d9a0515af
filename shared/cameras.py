"""``cameras.json``: the cameras a reconstruction backend recovered, one entry per frame.

Every backend writes the same file. Poses are camera-to-world 4x4 matrices in the OpenCV
camera convention (x right, y down, z forward), in the reconstruction's own world frame
and units (sparse SfM is defined up to a similarity). Pixel coordinates follow COLMAP:
the centre of the top-left pixel is (0.5, 0.5), so intrinsics scale exactly with size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field, JsonValue, field_validator, model_validator

from shared.base import WireModel
from shared.jobs import Backend

CAMERAS_NAME = "cameras.json"
C2W_CONVENTION = "opencv c2w (x right, y down, z forward)"

Row4 = Annotated[list[float], Field(min_length=4, max_length=4)]
Matrix4 = Annotated[list[Row4], Field(min_length=4, max_length=4)]


class Intrinsics(WireModel):
    """Pinhole intrinsics in pixels at one image size; ``distortion`` as the backend names it."""

    fx: float = Field(gt=0)
    fy: float = Field(gt=0)
    cx: float
    cy: float
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    model: str | None = Field(None, description="backend camera model, e.g. COLMAP's SIMPLE_RADIAL")
    distortion: dict[str, float] = Field(
        default_factory=dict, description="unitless coefficients (k1, …): the same at every size"
    )

    def scaled(self, width: int, height: int) -> Intrinsics:
        """The same camera at another image size (a resize of the whole frame)."""
        sx, sy = width / self.width, height / self.height
        scaled = {"fx": self.fx * sx, "fy": self.fy * sy, "cx": self.cx * sx, "cy": self.cy * sy}
        return self.model_copy(update=scaled | {"width": width, "height": height})


class FrameSource(WireModel):
    video: int = Field(ge=0, description="index of the video in the job")
    t_s: float = Field(ge=0, description="timestamp within that video")


class CameraFrame(WireModel):
    name: str = Field(description="frame file name, e.g. frame_000001.jpg")
    index: int = Field(ge=1, description="frame number across all videos of the job, from 1")
    source: FrameSource | None = Field(None, description="null when the backend had no frames.json")
    registered: bool
    c2w: Matrix4 | None = Field(None, description="camera to world; null when not registered")
    intrinsics: Intrinsics | None = Field(None, description="at the processed frame size")
    native_intrinsics: Intrinsics | None = Field(None, description="at the video's native size")

    @field_validator("c2w")
    @classmethod
    def _rigid(cls, c2w: list[list[float]] | None) -> list[list[float]] | None:
        if c2w is None:
            return None
        matrix = np.asarray(c2w, dtype=np.float64)
        if not np.isfinite(matrix).all():
            raise ValueError("c2w holds NaN or infinite values")
        if not np.allclose(matrix[3], [0, 0, 0, 1], atol=1e-6):
            raise ValueError(f"c2w's last row must be [0, 0, 0, 1], got {matrix[3].tolist()}")
        return c2w

    @model_validator(mode="after")
    def _pose_iff_registered(self) -> CameraFrame:
        if self.registered != (self.c2w is not None):
            raise ValueError(f"{self.name}: c2w must be given exactly when the frame is registered")
        return self

    def centre(self) -> np.ndarray | None:
        """Camera centre in world coordinates, or None when not registered."""
        return None if self.c2w is None else np.asarray(self.c2w, dtype=np.float64)[:3, 3]


class Cameras(WireModel):
    backend: Backend
    version: str = Field(description="backend name and version, e.g. 'pycolmap 4.2.1'")
    parameters: dict[str, JsonValue] = Field(default_factory=dict, description="options the backend ran with")
    convention: str = C2W_CONVENTION
    frames: list[CameraFrame]

    @property
    def registered(self) -> list[CameraFrame]:
        return [frame for frame in self.frames if frame.registered]


def write_cameras(path, cameras: Cameras) -> None:
    """Write ``cameras.json`` atomically (temp file in the same folder, then ``os.replace``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(cameras.model_dump_json())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_cameras(path) -> Cameras:
    return Cameras.model_validate_json(Path(path).read_bytes())
