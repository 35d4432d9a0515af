"""TEST DOUBLE of ``lingbot_map.models.gct_stream.GCTStream``: not a neural network.

Same constructor keywords and streaming API as upstream (``clean_kv_cache``,
``_set_skip_append``, ``forward(images, num_frame_for_scale=, num_frame_per_block=,
causal_inference=)``), returning correctly shaped predictions computed from the
synthetic scene in ``lingbot_map._scene``: poses camera-to-world, anchored on the first
frame after each ``clean_kv_cache`` (later windows also at another scale, as a real
model's arbitrary scale), depth along z, confidence >= 1. See ../../README.md.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import torch

from lingbot_map import _scene


class GCTStream(torch.nn.Module):
    def __init__(self, img_size: int = 518, patch_size: int = 14, enable_point: bool = False,
                 enable_3d_rope: bool = False, max_frame_num: int = 1024, kv_cache_sliding_window: int = 64,
                 kv_cache_scale_frames: int = 8, kv_cache_cross_frame_special: bool = True,
                 kv_cache_include_scale_frames: bool = True, use_sdpa: bool = False,
                 camera_num_iterations: int = 4, **kwargs):
        super().__init__()
        self.img_size, self.patch_size = img_size, patch_size
        self.kv_cache_sliding_window = kv_cache_sliding_window
        self.kv_cache_scale_frames = kv_cache_scale_frames
        self.use_sdpa = use_sdpa
        self.camera_num_iterations = camera_num_iterations
        # Parameters only so that checkpoints and load_state_dict behave as upstream's do.
        self.aggregator = torch.nn.Linear(4, 4)
        self.camera_head = torch.nn.Linear(4, 9)
        self._skip_append = False
        self._anchor: int | None = None
        self._scale = 1.0
        self._windows = 0
        self._forwards = 0
        self._cached = 0

    # -- upstream's streaming API ------------------------------------------------------

    def clean_kv_cache(self) -> None:
        self._anchor, self._cached = None, 0
        self._log({"event": "clean"})

    def _set_skip_append(self, skip: bool) -> None:
        self._skip_append = bool(skip)

    def forward(self, images, query_points=None, num_frame_for_scale=None, sliding_window_size=None,
                num_frame_per_block=1, causal_inference=False, **kwargs):
        if images.dim() == 4:
            images = images.unsqueeze(0)
        batch, frames, _, height, width = images.shape
        self._forwards += 1
        limit = os.environ.get("LINGBOT_DOUBLE_OOM_WINDOW_ABOVE")
        if limit and self.kv_cache_sliding_window > int(limit) and self._forwards == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (test double)")
        delay = float(os.environ.get("LINGBOT_DOUBLE_FRAME_DELAY_S", "0") or 0)
        if delay:
            time.sleep(delay * frames)

        tags = [round(float(images[0, s, 0, 0, 0]) * _scene.TAG_SCALE) for s in range(frames)]
        if self._anchor is None:
            self._anchor = tags[0]
            self._scale = 1.0 / (1.0 + 0.5 * self._windows)
            self._windows += 1
        if not self._skip_append:
            self._cached += frames
        self._log({"event": "forward", "frames": tags, "skip_append": self._skip_append,
                   "block": num_frame_per_block, "scale_frames": num_frame_for_scale, "cached": self._cached,
                   "window": self.kv_cache_sliding_window})

        k = _scene.intrinsics(height, width)
        fov_h, fov_w = 2 * math.atan((height / 2) / k[1, 1]), 2 * math.atan((width / 2) / k[0, 0])
        anchor_inv = np.linalg.inv(_scene.gt_c2w(self._anchor))
        pose_enc = np.zeros((batch, frames, 9), np.float32)
        depth = np.zeros((batch, frames, height, width, 1), np.float32)
        conf = np.full((batch, frames, height, width), _scene.CONF_HIGH, np.float32)
        conf[:, :, : int(height * _scene.TOP_LOW_CONF_ROWS)] = _scene.CONF_LOW
        for s, tag in enumerate(tags):
            gt = _scene.gt_c2w(tag)
            rel = anchor_inv @ gt
            pose_enc[:, s, :3] = rel[:3, 3] * self._scale
            pose_enc[:, s, 3:7] = _scene.matrix_to_quat_xyzw(rel[:3, :3])
            pose_enc[:, s, 7:] = fov_h, fov_w
            depth[:, s, :, :, 0] = _scene.depth_map(gt, height, width) * self._scale
        device = images.device
        return {
            "pose_enc": torch.from_numpy(pose_enc).to(device),
            "depth": torch.from_numpy(depth).to(device),
            "depth_conf": torch.from_numpy(conf).to(device),
            "images": images,
        }

    @staticmethod
    def _log(record: dict) -> None:
        path = os.environ.get("LINGBOT_DOUBLE_LOG")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
