"""Small rigid-geometry helpers: similarity alignment of trajectories and their lengths.

Reconstructions are only defined up to a similarity (scale, rotation, translation), so
comparing camera centres with a ground truth, or two jobs with each other, goes through
:func:`umeyama` first.
"""

from __future__ import annotations

import numpy as np


def _points(name: str, points) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def umeyama(src, dst, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares ``(s, R, t)`` with ``dst ≈ s * R @ src + t`` (Umeyama 1991).

    ``src`` and ``dst`` are corresponding ``(N, 3)`` points, N >= 3, not all coincident.
    Without ``with_scale`` the fit is rigid and ``s`` is 1.
    """
    src = _points("src", src)
    dst = _points("dst", dst)
    if src.shape != dst.shape:
        raise ValueError(f"src and dst differ in shape: {src.shape} vs {dst.shape}")
    n = len(src)
    if n < 3:
        raise ValueError(f"need at least 3 corresponding points, got {n}")
    mean_src, mean_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mean_src, dst - mean_dst
    var_src = float((src_c**2).sum() / n)
    if var_src <= 1e-24:
        raise ValueError("src points are all at the same place: no alignment is defined")
    cov = dst_c.T @ src_c / n
    u, d, vt = np.linalg.svd(cov)
    # A reflection would fit mirrored data better; the sign flip keeps R a rotation.
    sign = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2] = -1.0
    rotation = u @ np.diag(sign) @ vt
    scale = float((d * sign).sum() / var_src) if with_scale else 1.0
    translation = mean_dst - scale * rotation @ mean_src
    return scale, rotation, translation


def apply_similarity(points, scale: float, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """``scale * R @ p + t`` for each row of ``points``."""
    return scale * _points("points", points) @ np.asarray(rotation).T + np.asarray(translation)


def align_rmse(estimated, truth) -> float:
    """RMSE, in the units of ``truth``, of ``estimated`` after the best similarity alignment."""
    scale, rotation, translation = umeyama(estimated, truth)
    residual = apply_similarity(estimated, scale, rotation, translation) - _points("truth", truth)
    return float(np.sqrt((residual**2).sum(axis=1).mean()))


def trajectory_length(points) -> float:
    """Length of the polyline through ``points`` in order (0 for fewer than two points)."""
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {array.shape}")
    if len(array) < 2:
        return 0.0
    return float(np.linalg.norm(np.diff(array, axis=0), axis=1).sum())
