"""Disk-space checks: refuse a job the work root cannot hold instead of filling the disk."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from shared.errors import ApiError
from shared.jobs import JobSpec

_MIB = 1024 * 1024
#: JPEG at the storage agent's default quality holds natural images in ~0.2–0.3 bytes per pixel.
JPEG_BYTES_PER_PIXEL = 0.3
#: Point cloud, cameras, QC files and a GLB together, relative to the frames they come from.
OUTPUTS_SHARE = 0.5
#: Frames assumed per video when neither its duration nor max_frames is known.
UNKNOWN_VIDEO_FRAMES = 600


class InsufficientStorage(ApiError):
    status_code = 507
    code = "insufficient_storage"


def estimate_job_mib(spec: JobSpec, durations_s: list[float | None]) -> int:
    """Disk a job needs for its frames and outputs (an estimate, on the high side)."""
    width = spec.extract.width or 1920
    per_frame = width * (width * 9 // 16) * JPEG_BYTES_PER_PIXEL
    frames = 0
    for duration_s in durations_s:
        n = math.ceil(duration_s * spec.extract.fps) if duration_s else UNKNOWN_VIDEO_FRAMES
        frames += min(n, spec.extract.max_frames) if spec.extract.max_frames else n
    return math.ceil(frames * per_frame * (1 + OUTPUTS_SHARE) / _MIB)


def check_free_space(root: Path, need_mib: int, reserve_mib: int, job_id: int) -> None:
    free_mib = shutil.disk_usage(root).free // _MIB
    if need_mib + reserve_mib > free_mib:
        raise InsufficientStorage(
            f"not enough disk under {root} for job {job_id}: it needs about {need_mib} MiB for frames and "
            f"outputs (plus {reserve_mib} MiB kept free), {free_mib} MiB are free; free space "
            f"(purge finished jobs) or lower the fps, width or max_frames"
        )
