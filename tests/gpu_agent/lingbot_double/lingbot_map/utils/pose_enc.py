"""TEST DOUBLE of ``lingbot_map.utils.pose_enc`` (the decoding the runner calls)."""

from __future__ import annotations

import torch


def _quat_to_mat(q: torch.Tensor) -> torch.Tensor:
    x, y, z, w = torch.unbind(q / q.norm(dim=-1, keepdim=True), -1)
    rows = (1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y))
    return torch.stack(rows, -1).reshape(q.shape[:-1] + (3, 3))


def pose_encoding_to_extri_intri(pose_encoding, image_size_hw=None, pose_encoding_type="absT_quaR_FoV",
                                 build_intrinsics=True):
    """(B, S, 9) → pose (B, S, 3, 4) and intrinsics (B, S, 3, 3), as upstream decodes them."""
    t, quat = pose_encoding[..., :3], pose_encoding[..., 3:7]
    fov_h, fov_w = pose_encoding[..., 7], pose_encoding[..., 8]
    extrinsics = torch.cat([_quat_to_mat(quat), t[..., None]], dim=-1)
    intrinsics = None
    if build_intrinsics:
        h, w = image_size_hw
        intrinsics = torch.zeros(pose_encoding.shape[:2] + (3, 3), dtype=pose_encoding.dtype)
        intrinsics[..., 0, 0] = (w / 2.0) / torch.tan(fov_w / 2.0)
        intrinsics[..., 1, 1] = (h / 2.0) / torch.tan(fov_h / 2.0)
        intrinsics[..., 0, 2] = w / 2
        intrinsics[..., 1, 2] = h / 2
        intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics
