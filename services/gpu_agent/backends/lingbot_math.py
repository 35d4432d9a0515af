"""Pure-numpy maths of the lingbot runner: poses, unprojection, point filtering, schedules.

numpy and the stdlib only: ``lingbot_runner.py`` loads this file by path inside
LingBot-Map's own Python environment (torch, no pydantic, not this project), and the
tests import it as ``services.gpu_agent.backends.lingbot_math``.

Conventions. LingBot-Map's ``pose_encoding_to_extri_intri`` returns a 3×4 pose that is
**camera-to-world** in OpenCV axes (x right, y down, z forward); its demo inverts it and
calls the result ``extrinsic`` (world-to-camera). Pixel (u, v) is the pixel's index with
the principal point at (W/2, H/2), as upstream unprojects depth; ``cameras.json`` counts
from the top-left pixel's corner (COLMAP), so intrinsics written there gain half a pixel.
"""

from __future__ import annotations

import math

import numpy as np

#: What ``pose_encoding_to_extri_intri`` returns (LINGBOT_NOTES.md). Flip this, and only
#: this, if ``cosma-qc lingbot-check`` reports the other convention as the consistent one.
MODEL_POSE_IS_C2W = True
#: The model was trained on 320 views: longer streams keep every k-th frame in the cache.
TRAINED_VIEWS = 320
#: Streams longer than this drift or collapse: they run in overlapping windows instead.
STREAMING_MAX_FRAMES = 3000
#: Frames shared by consecutive windows, to align them (upstream's overlap default).
WINDOW_OVERLAP = 16


# --- poses -------------------------------------------------------------------------


def quat_xyzw_to_matrix(quat) -> np.ndarray:
    """Rotation matrices (..., 3, 3) from quaternions (..., 4) in x, y, z, w order."""
    q = np.asarray(quat, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)  # fmt: skip


def to_4x4(pose) -> np.ndarray:
    """(..., 3, 4) or (..., 4, 4) rigid transforms as (..., 4, 4) float64."""
    pose = np.asarray(pose, dtype=np.float64)
    out = np.zeros(pose.shape[:-2] + (4, 4))
    out[..., :3, :4] = pose[..., :3, :4]
    out[..., 3, 3] = 1.0
    return out


def invert_rigid(pose) -> np.ndarray:
    """Inverse of rigid transforms (..., 4, 4) (or 3×4): ``[Rᵀ | -Rᵀ t]``."""
    pose = to_4x4(pose)
    rot_t = np.swapaxes(pose[..., :3, :3], -1, -2)
    out = np.zeros_like(pose)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rot_t, pose[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def model_pose_to_c2w(extrinsic) -> np.ndarray:
    """Camera-to-world 4×4 from what ``pose_encoding_to_extri_intri`` returned (3×4)."""
    pose = to_4x4(extrinsic)
    return pose if MODEL_POSE_IS_C2W else invert_rigid(pose)


def fov_to_intrinsics(fov_h: float, fov_w: float, height: int, width: int) -> np.ndarray:
    """The 3×3 K LingBot-Map derives from its field of view (principal point at the centre)."""
    fy = (height / 2.0) / math.tan(fov_h / 2.0)
    fx = (width / 2.0) / math.tan(fov_w / 2.0)
    return np.array([[fx, 0.0, width / 2.0], [0.0, fy, height / 2.0], [0.0, 0.0, 1.0]])


# --- unprojection and points -------------------------------------------------------


def pixel_grid(height: int, width: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(v, u) pixel indices of every ``stride``-th row and column."""
    v, u = np.meshgrid(np.arange(0, height, stride), np.arange(0, width, stride), indexing="ij")
    return v, u


def unproject(depth, intrinsics, c2w, v=None, u=None) -> np.ndarray:
    """World points of pixels (v, u) (default: all) at ``depth`` (along z), shape (..., 3)."""
    depth = np.asarray(depth, dtype=np.float64)
    if u is None:
        v, u = pixel_grid(*depth.shape[:2])
        z = depth[..., 0] if depth.ndim == 3 else depth
    else:
        z = depth
    k = np.asarray(intrinsics, dtype=np.float64)
    cam = np.stack([(u - k[0, 2]) * z / k[0, 0], (v - k[1, 2]) * z / k[1, 1], z], axis=-1)
    pose = to_4x4(c2w)
    return cam @ pose[:3, :3].T + pose[:3, 3]


def project(points, intrinsics, c2w) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) pixel coordinates (..., 2) and depths (...) of world points seen from a camera."""
    cam = (np.asarray(points, dtype=np.float64) - to_4x4(c2w)[:3, 3]) @ to_4x4(c2w)[:3, :3]
    k = np.asarray(intrinsics, dtype=np.float64)
    z = cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([k[0, 0] * cam[..., 0] / z + k[0, 2], k[1, 1] * cam[..., 1] / z + k[1, 2]], axis=-1)
    return uv, z


def frame_points(depth, conf, colours, intrinsics, c2w, *, conf_threshold: float, stride: int):
    """Confident points of one frame: (xyz (M,3) float32, rgb (M,3) uint8, conf (M,) float32).

    ``depth`` and ``conf`` are (H, W); ``colours`` (H, W, 3) in 0..1. Keeps every
    ``stride``-th pixel with finite positive depth and confidence above the threshold.
    """
    depth = np.asarray(depth, dtype=np.float32)
    v, u = pixel_grid(depth.shape[0], depth.shape[1], stride)
    z, c = depth[v, u], np.asarray(conf, dtype=np.float32)[v, u]
    keep = np.isfinite(z) & (z > 0) & np.isfinite(c) & (c > conf_threshold)
    xyz = unproject(z[keep], intrinsics, c2w, v[keep], u[keep]).astype(np.float32)
    rgb = np.clip(np.round(np.asarray(colours)[v, u][keep] * 255.0), 0, 255).astype(np.uint8)
    return xyz, rgb, c[keep]


def voxel_cap(xyz, max_points: int, conf=None) -> np.ndarray:
    """Indices of at most ``max_points`` points: one per voxel, on the finest grid that fits.

    The kept point of a voxel is its most confident (or its first without ``conf``).
    Returned indices are sorted, so frame order survives.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    n = len(xyz)
    if n <= max_points:
        return np.arange(n)
    if max_points < 1:
        return np.arange(0)
    lo, hi = xyz.min(axis=0), xyz.max(axis=0)
    extent = float(max((hi - lo).max(), 1e-9))
    order = np.argsort(-np.asarray(conf), kind="stable") if conf is not None else np.arange(n)
    # A cube of side extent/cbrt(max) holds max voxels if the cloud filled its box;
    # surfaces fill less, so start finer and coarsen until the count fits.
    voxel = extent / (max_points ** (1 / 3)) / 4
    while True:
        keys = np.floor((xyz[order] - lo) / voxel).astype(np.int64)
        _, first = np.unique(keys, axis=0, return_index=True)
        if len(first) <= max_points:
            return np.sort(order[first])
        voxel *= 1.25


# --- schedules ---------------------------------------------------------------------


def keyframe_interval(frames: int) -> int:
    """1 up to :data:`TRAINED_VIEWS` frames, else ``ceil(frames / TRAINED_VIEWS)``."""
    if frames < 0:
        raise ValueError(f"frames must be >= 0, got {frames}")
    return 1 if frames <= TRAINED_VIEWS else math.ceil(frames / TRAINED_VIEWS)


def is_keyframe(i: int, scale_frames: int, interval: int) -> bool:
    """Whether streamed frame ``i`` (0-based, counted from the stream's start) is cached.

    Scale frames always are; then every ``interval``-th frame, from the first streamed one.
    """
    return i < scale_frames or interval <= 1 or (i - scale_frames) % interval == 0


def choose_mode(frames: int, requested: str = "auto") -> str:
    """'streaming' (one KV cache over the whole sequence) or 'windowed'."""
    if requested in ("streaming", "windowed"):
        return requested
    if requested != "auto":
        raise ValueError(f"mode must be auto, streaming or windowed, got {requested!r}")
    return "streaming" if frames <= STREAMING_MAX_FRAMES else "windowed"


def window_plan(frames: int, window: int, overlap: int = WINDOW_OVERLAP) -> list[tuple[int, int]]:
    """[start, end) windows of ``window`` frames covering ``frames``, consecutive ones
    sharing ``overlap`` frames; the last window is pulled back to stay full."""
    if window <= overlap:
        raise ValueError(f"window ({window}) must exceed overlap ({overlap})")
    if frames <= window:
        return [(0, frames)]
    step = window - overlap
    plan = [(start, start + window) for start in range(0, frames - window, step)]
    plan.append((frames - window, frames))
    return plan


# --- window alignment --------------------------------------------------------------


def align_windows(prev_c2w, cur_c2w, scale_ratios=None) -> np.ndarray:
    """4×4 similarity S with ``prev ≈ S @ cur`` for the cameras two windows share.

    Rotation: the SO(3) projection of Σ R_prev R_curᵀ. Scale: the median of
    ``scale_ratios`` (depth in prev / depth in cur, per shared frame) when given, else
    the ratio of the camera centres' spreads. Translation: least squares on the centres.
    """
    prev, cur = to_4x4(prev_c2w), to_4x4(cur_c2w)
    m = np.einsum("nij,nkj->ik", prev[:, :3, :3], cur[:, :3, :3])
    u, _, vt = np.linalg.svd(m)
    rot = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    c_prev, c_cur = prev[:, :3, 3], cur[:, :3, 3]
    ratios = np.asarray(scale_ratios if scale_ratios is not None else [], dtype=np.float64)
    ratios = ratios[np.isfinite(ratios) & (ratios > 0)]
    if len(ratios):
        scale = float(np.median(ratios))
    else:
        spread_cur = np.linalg.norm(c_cur - c_cur.mean(axis=0), axis=1).sum()
        spread_prev = np.linalg.norm(c_prev - c_prev.mean(axis=0), axis=1).sum()
        scale = float(spread_prev / spread_cur) if spread_cur > 1e-12 else 1.0
    trans = (c_prev - scale * c_cur @ rot.T).mean(axis=0)
    sim = np.eye(4)
    sim[:3, :3] = scale * rot
    sim[:3, 3] = trans
    return sim


def apply_similarity_to_c2w(sim, c2w) -> tuple[np.ndarray, float]:
    """Poses (..., 4, 4) moved by similarity ``sim``, kept rigid; and the scale (for depths)."""
    sim = np.asarray(sim, dtype=np.float64)
    scale = float(np.cbrt(np.linalg.det(sim[:3, :3])))
    rot = sim[:3, :3] / scale
    pose = to_4x4(c2w).copy()
    out = pose.copy()
    out[..., :3, :3] = rot @ pose[..., :3, :3]
    out[..., :3, 3] = scale * pose[..., :3, 3] @ rot.T + sim[:3, 3]
    return out, scale


# --- intrinsics at other sizes -----------------------------------------------------


def frame_intrinsics(k_model, frame_width: int, frame_height: int, *, image_size: int = 518,
                     patch_size: int = 14) -> dict:  # fmt: skip
    """Model intrinsics (pixel-index convention, at the model input) as a ``cameras.json``
    intrinsics dict at the frame file's size (COLMAP pixel convention).

    Undoes LingBot-Map's "crop" preprocessing: resize to ``image_size`` wide with the
    height rounded to a multiple of ``patch_size``, then a centre crop of taller images.
    """
    k = np.asarray(k_model, dtype=np.float64)
    new_h = round(frame_height * (image_size / frame_width) / patch_size) * patch_size
    top = (new_h - image_size) // 2 if new_h > image_size else 0
    sx, sy = frame_width / image_size, frame_height / new_h
    return {
        "fx": float(k[0, 0] * sx), "fy": float(k[1, 1] * sy),
        "cx": float((k[0, 2] + 0.5) * sx), "cy": float((k[1, 2] + 0.5 + top) * sy),
        "width": int(frame_width), "height": int(frame_height), "model": "PINHOLE", "distortion": {},
    }  # fmt: skip


def scaled_intrinsics(intrinsics: dict, width: int, height: int) -> dict:
    """The same camera at another size of the whole frame (as ``Intrinsics.scaled``)."""
    sx, sy = width / intrinsics["width"], height / intrinsics["height"]
    return {**intrinsics, "fx": intrinsics["fx"] * sx, "fy": intrinsics["fy"] * sy, "cx": intrinsics["cx"] * sx,
            "cy": intrinsics["cy"] * sy, "width": int(width), "height": int(height)}  # fmt: skip


# --- statistics --------------------------------------------------------------------


def confidence_stats(conf, conf_threshold: float) -> dict:
    """Per-frame confidence summary for ``lingbot_stats.json``."""
    c = np.asarray(conf, dtype=np.float64).ravel()
    c = c[np.isfinite(c)]
    if not len(c):
        return {"mean": None, "median": None, "p10": None, "above_threshold": 0.0}
    return {
        "mean": round(float(c.mean()), 4),
        "median": round(float(np.median(c)), 4),
        "p10": round(float(np.percentile(c, 10)), 4),
        "above_threshold": round(float((c > conf_threshold).mean()), 4),
    }


def depth_consistency(depth_a, k_a, pose_a, depth_b, k_b, pose_b, *, stride: int = 8) -> float | None:
    """Median relative depth disagreement when frame a's pixels are seen from frame b.

    Near 0 when the poses are right; a pose convention swap makes it large. The runner
    reports it for both readings of the model's poses so a GPU check can tell which holds.
    """
    depth_a, depth_b = np.asarray(depth_a, np.float64), np.asarray(depth_b, np.float64)
    v, u = pixel_grid(depth_a.shape[0], depth_a.shape[1], stride)
    z = depth_a[v, u]
    ok = np.isfinite(z) & (z > 0)
    world = unproject(z[ok], k_a, pose_a, v[ok], u[ok])
    uv, zb = project(world, k_b, pose_b)
    h, w = depth_b.shape
    front = np.isfinite(uv).all(axis=1) & (zb > 0)
    uv, zb = np.round(uv[front]).astype(np.int64), zb[front]
    seen = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    if seen.sum() < 10:
        return None
    measured = depth_b[uv[seen, 1], uv[seen, 0]]
    return float(np.median(np.abs(measured - zb[seen]) / np.maximum(zb[seen], 1e-9)))
