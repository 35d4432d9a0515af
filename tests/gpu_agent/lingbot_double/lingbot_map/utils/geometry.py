"""TEST DOUBLE of ``lingbot_map.utils.geometry`` (numpy, same signature as upstream)."""

from __future__ import annotations

import numpy as np


def unproject_depth_map_to_point_map(depth_map, extrinsics_cam, intrinsics_cam):
    """(S, H, W[, 1]) depths with world-to-camera (S, 3, 4) poses → world points (S, H, W, 3)."""
    depth_map = np.asarray(depth_map)
    out = []
    for depth, w2c, k in zip(depth_map, np.asarray(extrinsics_cam), np.asarray(intrinsics_cam)):
        depth = depth[..., 0] if depth.ndim == 3 else depth
        h, w = depth.shape
        v, u = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        cam = np.stack([(u - k[0, 2]) * depth / k[0, 0], (v - k[1, 2]) * depth / k[1, 1], depth], -1)
        rot, t = w2c[:3, :3], w2c[:3, 3]
        out.append((cam - t) @ rot)  # inverse of x_cam = R x_world + t
    return np.stack(out).astype(np.float32)
