"""``qc.json``: the quality verdict of one job, the evidence behind it and what it was judged by.

Written by the gpu agent after the reconstruction (and, frame facts only, when the
reconstruction failed). Frame numbers are the job's, from 1, across all its videos. Shares
are fractions (0..1); grey levels are 0..255; sharpness is ``var(Laplacian) / var(grey)``
measured on a grey copy scaled to 640 px wide, so it does not depend on the frame size.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, model_validator

from shared.base import WireModel

QC_NAME = "qc.json"
QC_SCHEMA = "cosma-qc/qc@1"

Share = Annotated[float, Field(ge=0, le=1)]
Severity = Literal["warn", "fail"]
Status = Literal["pass", "warn", "fail"]


class QcThresholds(WireModel):
    """Every number a job is judged by, with its default. Recorded in each ``qc.json``.

    Per-frame defaults were set on the synthetic seabed of ``services.demo.synth`` at 640 px:
    sharp frames measure 0.18–0.31, Gaussian blur σ 1 px 0.07, σ 3 px 0.024, 6 px motion
    blur 0.045, and 320 px frames (upscaled for analysis) 0.06–0.11. Calibrate
    ``sharpness_min`` on real footage; the neighbour rule needs no calibration. A frozen frame
    re-encoded by H.264 differs from its original by 0.03 of the grey standard deviation,
    consecutive frames of the survey at 10 fps by about 0.95.
    """

    # -- per frame ---------------------------------------------------------------------
    sharpness_min: float = Field(0.03, ge=0, description="a frame below this sharpness is blurry")
    neighbour_ratio: float = Field(
        0.5, ge=0, le=1, description="a frame below this share of its neighbours' median sharpness is blurry"
    )
    neighbour_window: int = Field(5, ge=1, le=50, description="neighbours on each side for that median")
    black_brightness_max: float = Field(16, ge=0, le=255, description="mean grey below this: a black frame")
    uniform_contrast_max: float = Field(
        4, ge=0, le=128, description="grey standard deviation below this: a near-uniform frame (counted as black)"
    )
    clipped_share_max: Share = Field(0.25, description="clipped dark or bright pixels above this: badly exposed")
    duplicate_diff_max: float = Field(
        0.1, ge=0, le=10,
        description="mean grey difference to the previous kept frame, over the frame's grey standard deviation, "
        "below this: a near-duplicate",
    )
    # -- per recording: shares of frames ------------------------------------------------
    blurry_warn: Share = 0.15
    blurry_fail: Share = 0.40
    black_warn: Share = 0.05
    black_fail: Share = 0.25
    duplicate_warn: Share = 0.10
    duplicate_fail: Share = 0.40
    exposure_warn: Share = 0.15
    exposure_fail: Share = 0.50
    # -- reconstruction -----------------------------------------------------------------
    registered_warn: Share = Field(0.90, description="warn when fewer of the frames used are registered")
    registered_fail: Share = Field(0.60, description="fail when fewer of the frames used are registered")
    jump_ratio: float = Field(8.0, gt=1, description="a camera step this many times the median step is a jump")
    gap_frames_warn: int = Field(3, ge=1, description="a run of this many unregistered frames is a gap")
    reprojection_error_warn_px: float = Field(1.5, gt=0, description="colmap: mean reprojection error above this")
    keypoints_warn: int = Field(
        100, ge=0, description="colmap: mean keypoints per frame below this (weak texture; a frame with fewer "
        "rarely registers; the 320 px synthetic survey gives ~300, 640 px ~1200)",
    )

    @model_validator(mode="after")
    def _fail_beyond_warn(self) -> "QcThresholds":
        for name in ("blurry", "black", "duplicate", "exposure"):
            if getattr(self, f"{name}_fail") < getattr(self, f"{name}_warn"):
                raise ValueError(f"{name}_fail must not be below {name}_warn")
        if self.registered_fail > self.registered_warn:
            raise ValueError("registered_fail must not be above registered_warn")
        return self


class FrameFilter(WireModel):
    """Flagged frames to drop before the reconstruction (the recording is judged on all frames)."""

    enabled: bool = True
    blurry: bool = True
    black: bool = True
    duplicates: bool = True
    blurry_percentile: float | None = Field(
        None, ge=0, le=50, description="also drop the blurriest this-many percent of the recording"
    )


class QcOptions(WireModel):
    """Per-job QC options (``JobSpec.qc``); what is left unset comes from the agent's settings."""

    thresholds: QcThresholds | None = None
    filter: FrameFilter | None = None


class FrameRange(WireModel):
    first: int = Field(ge=1)
    last: int = Field(ge=1)

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}–{self.last}"


class Stats(WireModel):
    """Distribution of one measure over the frames (or points) it was taken on."""

    min: float
    p10: float
    median: float
    p90: float
    max: float


class VideoFacts(WireModel):
    index: int = Field(ge=0)
    path: str
    frames: int = Field(ge=0)
    first_t_s: float | None = None
    last_t_s: float | None = None
    native_width: int | None = None
    native_height: int | None = None


class FlagSummary(WireModel):
    count: int = Field(ge=0)
    share: Share
    ranges: list[FrameRange] = []


class FrameSummary(WireModel):
    count: int = Field(ge=0, description="frames ingested")
    width: int | None = Field(None, description="frame size as extracted (of the first frame)")
    height: int | None = None
    sample_fps: float | None = None
    sharpness: Stats | None = None
    brightness: Stats | None = None
    blurry: FlagSummary
    black: FlagSummary
    duplicate: FlagSummary
    exposure: FlagSummary
    filtered: bool = Field(False, description="whether dropped frames were withheld from the backend")
    kept: int = Field(ge=0)
    dropped: int = Field(ge=0)
    dropped_by_reason: dict[str, int] = {}
    csv: str = "frames_qc.csv"


class Jump(WireModel):
    frame: int = Field(ge=1, description="the frame the camera jumped to")
    step: float = Field(ge=0, description="distance from the previous registered frame, per frame")
    ratio: float = Field(ge=0, description="step over the median step")


class ColmapStats(WireModel):
    mean_reprojection_error_px: float | None = None
    mean_track_length: float | None = None
    mean_observations_per_frame: float | None = None
    keypoints: Stats | None = None
    mean_keypoints_per_frame: float | None = None


class ReconSummary(WireModel):
    backend: str
    version: str = ""
    frames_used: int = Field(ge=0)
    frames_registered: int = Field(ge=0)
    registered_share: Share
    points: int = Field(ge=0)
    confidence: Stats | None = None
    trajectory_length: float = Field(ge=0, description="in reconstruction units (SfM: arbitrary scale)")
    median_step: float = Field(ge=0)
    jumps: list[Jump] = []
    gaps: list[FrameRange] = Field([], description="runs of unregistered frames among those used")
    camera_extent: list[float] = Field([], description="size of the camera centres' box along x, y, z")
    point_extent: list[float] = Field([], description="size of the 2nd–98th percentile box of the points")
    colmap: ColmapStats | None = None


class Reason(WireModel):
    code: str = Field(description="stable identifier, e.g. blurry_frames")
    severity: Severity
    message: str = Field(description="one sentence with the measured value, the threshold and the frames")
    measured: float | None = None
    threshold: float | None = None
    frames: list[FrameRange] = []


class Verdict(WireModel):
    status: Status
    reasons: list[Reason] = []

    @model_validator(mode="after")
    def _status_follows_reasons(self) -> "Verdict":
        worst = "fail" if any(r.severity == "fail" for r in self.reasons) else "warn" if self.reasons else "pass"
        if self.status != worst:
            raise ValueError(f"status {self.status!r} does not follow its reasons (expected {worst!r})")
        return self


class QcReport(WireModel):
    format: Literal["cosma-qc/qc@1"] = QC_SCHEMA
    job_id: int = Field(ge=1)
    created_at: datetime
    thresholds: QcThresholds
    filter: FrameFilter
    videos: list[VideoFacts] = []
    frames: FrameSummary
    reconstruction: ReconSummary | None = None
    reconstruction_error: str | None = Field(None, description="why there is no reconstruction summary")
    verdict: Verdict
    plots: list[str] = Field([], description="SVG files beside qc.json")
    report: str | None = Field(None, description="the self-contained HTML export beside qc.json")


def load_thresholds(path) -> QcThresholds:
    """Thresholds from a JSON file of any :class:`QcThresholds` fields (the rest keep defaults)."""
    try:
        return QcThresholds.model_validate(json.loads(Path(path).read_text()))
    except OSError as exc:
        raise ValueError(f"cannot read QC thresholds file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"QC thresholds file {path} is not JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"QC thresholds file {path}: {problems}") from None
