"""TEST DOUBLE of ``lingbot_map.utils.load_fn`` (same signature; "crop" mode only)."""

from __future__ import annotations

import re

import numpy as np
import torch
from PIL import Image

from lingbot_map._scene import TAG_SCALE


def load_and_preprocess_images(image_path_list, fx=None, fy=None, cx=None, cy=None, mode="crop",
                               image_size=512, patch_size=16):
    """Images as a float tensor (N, 3, H, W) in [0, 1], resized as upstream's "crop" mode.

    Double only: pixel (0, 0) of channel 0 carries the frame number (k / TAG_SCALE), the
    camera identity the double's model reads.
    """
    if len(image_path_list) == 0:
        raise ValueError("At least 1 image is required")
    if mode != "crop":
        raise ValueError("the double implements mode='crop' only")
    out = []
    for path in image_path_list:
        img = Image.open(path).convert("RGB")
        width, height = img.size
        new_h = round(height * (image_size / width) / patch_size) * patch_size
        array = np.asarray(img.resize((image_size, new_h), Image.Resampling.BILINEAR), dtype=np.float32) / 255
        if new_h > image_size:
            top = (new_h - image_size) // 2
            array = array[top : top + image_size]
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
        tensor[0, 0, 0] = int(re.findall(r"\d+", str(path).rsplit("/", 1)[-1])[-1]) / TAG_SCALE
        out.append(tensor)
    return torch.stack(out)
