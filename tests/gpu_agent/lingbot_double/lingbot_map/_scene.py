"""TEST DOUBLE only: the synthetic scene the double's model "sees".

Ground truth: frame k (the number in ``frame_%06d.jpg``) has camera-to-world pose
``gt_c2w(k)`` in OpenCV axes, with ``gt_c2w(1)`` the identity so the runner's world
(anchored on the first frame) is this world. Every pixel looks at the plane z = PLANE_Z.
The top TOP_LOW_CONF_ROWS share of rows has confidence 1.0 (below the usual 1.5 cut).
"""

from __future__ import annotations

import math

import numpy as np

PLANE_Z = 5.0
STEP_X = 0.05  # metres per frame along x
YAW_PER_FRAME = 0.003  # radians per frame about y
FOCAL_SCALE = 0.8  # fx = FOCAL_SCALE * width
CONF_HIGH, CONF_LOW = 2.0, 1.0
TOP_LOW_CONF_ROWS = 0.25
#: Frame numbers are carried in the top-left pixel of channel 0 as k / TAG_SCALE.
TAG_SCALE = float(2**20)


def gt_c2w(k: int) -> np.ndarray:
    yaw = YAW_PER_FRAME * (k - 1)
    pose = np.eye(4)
    pose[:3, :3] = [[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]]
    pose[:3, 3] = [STEP_X * (k - 1), 0.02 * math.sin(0.3 * (k - 1)), 0.0]
    return pose


def intrinsics(height: int, width: int) -> np.ndarray:
    f = FOCAL_SCALE * width
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])


def depth_map(c2w: np.ndarray, height: int, width: int) -> np.ndarray:
    """z-depth of each pixel (index convention, as upstream) looking at z = PLANE_Z."""
    k = intrinsics(height, width)
    v, u = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u, float)], -1)
    world_dir_z = rays @ c2w[2, :3]
    return (PLANE_Z - c2w[2, 3]) / world_dir_z


def matrix_to_quat_xyzw(rot: np.ndarray) -> np.ndarray:
    w = math.sqrt(max(0.0, 1 + rot[0, 0] + rot[1, 1] + rot[2, 2])) / 2
    x = math.copysign(math.sqrt(max(0.0, 1 + rot[0, 0] - rot[1, 1] - rot[2, 2])) / 2, rot[2, 1] - rot[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1 - rot[0, 0] + rot[1, 1] - rot[2, 2])) / 2, rot[0, 2] - rot[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1 - rot[0, 0] - rot[1, 1] + rot[2, 2])) / 2, rot[1, 0] - rot[0, 1])
    return np.array([x, y, z, w])
