"""Reconstruction QC: what ``cameras.json``, ``reconstruction.ply`` and ``colmap_stats.json`` say.

Distances are in the reconstruction's own units (sparse SfM has no scale), so every rule is
relative: a jump is a camera step far above the median step, not a distance in metres.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from shared.cameras import CAMERAS_NAME, Cameras, read_cameras
from shared.plyio import read_ply
from shared.qc import ColmapStats, FrameRange, Jump, QcThresholds, ReconSummary, Stats

from services.gpu_agent.backends.colmap_stats import COLMAP_STATS_NAME

log = logging.getLogger(__name__)

PLY_NAME = "reconstruction.ply"


def stats(values) -> Stats | None:
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return None
    p = np.percentile(array, [0, 10, 50, 90, 100])
    return Stats(min=p[0], p10=p[1], median=p[2], p90=p[3], max=p[4])


def trajectory(cameras: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """Frame numbers and camera centres ``(N, 3)`` of the registered frames, in frame order."""
    registered = sorted(cameras.registered, key=lambda f: f.index)
    frames = np.array([f.index for f in registered], dtype=np.int64)
    centres = np.array([f.centre() for f in registered], dtype=np.float64).reshape(-1, 3)
    return frames, centres


def steps(frames: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Distance between consecutive registered cameras, per frame number between them.

    Dividing by the frame gap keeps a step across dropped or unregistered frames comparable.
    """
    if len(frames) < 2:
        return np.zeros(0)
    return np.linalg.norm(np.diff(centres, axis=0), axis=1) / np.maximum(np.diff(frames), 1)


def summarise_reconstruction(job_dir: Path, thresholds: QcThresholds) -> ReconSummary:
    job_dir = Path(job_dir)
    cameras = read_cameras(job_dir / CAMERAS_NAME)
    used = sorted(cameras.frames, key=lambda f: f.index)
    frames, centres = trajectory(cameras)
    step = steps(frames, centres)
    median_step = float(np.median(step)) if step.size else 0.0
    jumps = []
    if median_step > 0:
        for k in np.flatnonzero(step > thresholds.jump_ratio * median_step):
            jumps.append(Jump(frame=int(frames[k + 1]), step=float(step[k]), ratio=float(step[k] / median_step)))

    gaps, run = [], []
    for frame in used + [None]:
        if frame is not None and not frame.registered:
            run.append(frame.index)
            continue
        if len(run) >= thresholds.gap_frames_warn:
            gaps.append(FrameRange(first=run[0], last=run[-1]))
        run = []

    ply = read_ply(job_dir / PLY_NAME) if (job_dir / PLY_NAME).exists() else {}
    xyz = np.stack([ply["x"], ply["y"], ply["z"]], axis=1) if "x" in ply else np.zeros((0, 3))
    point_extent: list[float] = []
    if len(xyz):
        lo, hi = np.percentile(xyz, [2, 98], axis=0)
        point_extent = [float(v) for v in hi - lo]
    camera_extent = [float(v) for v in centres.max(axis=0) - centres.min(axis=0)] if len(centres) else []

    return ReconSummary(
        backend=cameras.backend,
        version=cameras.version,
        frames_used=len(used),
        frames_registered=len(frames),
        registered_share=len(frames) / len(used) if used else 0.0,
        points=len(xyz),
        confidence=stats(ply["confidence"]) if "confidence" in ply else None,
        trajectory_length=float(np.linalg.norm(np.diff(centres, axis=0), axis=1).sum()) if len(centres) > 1 else 0.0,
        median_step=median_step,
        jumps=jumps,
        gaps=gaps,
        camera_extent=camera_extent,
        point_extent=point_extent,
        colmap=colmap_stats(job_dir, cameras) if cameras.backend == "colmap" else None,
    )


def colmap_stats(job_dir: Path, cameras: Cameras) -> ColmapStats:
    """From ``colmap_stats.json`` when the runner wrote one, else what ``cameras.json`` holds."""
    error = cameras.parameters.get("mean_reprojection_error_px")
    result = ColmapStats(mean_reprojection_error_px=float(error) if isinstance(error, (int, float)) else None)
    path = job_dir / COLMAP_STATS_NAME
    if not path.exists():
        return result
    try:
        raw = json.loads(path.read_text())
        keypoints = [int(v) for v in raw.get("keypoints", {}).values()]
        return ColmapStats(
            mean_reprojection_error_px=raw.get("mean_reprojection_error_px", result.mean_reprojection_error_px),
            mean_track_length=raw.get("mean_track_length"),
            mean_observations_per_frame=raw.get("mean_observations_per_frame"),
            keypoints=stats(keypoints),
            mean_keypoints_per_frame=float(np.mean(keypoints)) if keypoints else None,
        )
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return result
