"""Per-frame image metrics, measured on a grey copy scaled to a fixed width.

Scaling first makes every threshold independent of the extraction width; Pillow's JPEG
``draft`` mode decodes large frames at 1/2, 1/4 or 1/8 scale straight from the DCT, which
is most of what keeps a 1080p frame in a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: Width of the grey image every metric is measured on (the default extraction width).
ANALYSIS_WIDTH = 640
#: Each side of the analysis image is divided by this for the near-duplicate thumbnail:
#: averaging 4x4 blocks removes most JPEG noise, so a frozen frame differs by well under 1.
THUMB_FACTOR = 4
#: Grey levels at or below / at or above which a pixel counts as clipped.
DARK_LEVEL = 4
BRIGHT_LEVEL = 251


@dataclass(frozen=True)
class FrameMetrics:
    """What one frame measures. Grey levels are 0..255."""

    width: int  # of the frame file
    height: int
    sharpness: float  # var(Laplacian) / var(grey); 0 for a uniform image
    brightness: float  # mean grey
    contrast: float  # standard deviation of grey
    dark_share: float  # share of pixels <= DARK_LEVEL
    bright_share: float  # share of pixels >= BRIGHT_LEVEL


def analyse(path: Path) -> tuple[FrameMetrics, np.ndarray]:
    """Metrics of the frame at ``path`` and its thumbnail (for :func:`difference`)."""
    grey, size = load_grey(path)
    return measure(grey, size), thumbnail(grey)


def load_grey(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """The frame as uint8 grey at ``ANALYSIS_WIDTH`` (aspect kept), and its file size (w, h)."""
    with Image.open(path) as image:
        size = image.size
        height = max(1, round(ANALYSIS_WIDTH * size[1] / size[0]))
        image.draft("L", (ANALYSIS_WIDTH, height))
        grey = image.convert("L")
        if grey.size != (ANALYSIS_WIDTH, height):
            # Lanczos keeps the fine detail that sharpness measures (bilinear lost a third of it).
            grey = grey.resize((ANALYSIS_WIDTH, height), Image.Resampling.LANCZOS)
        return np.asarray(grey), size


def _mean_var(values: np.ndarray) -> tuple[float, float]:
    # float32 dot products: several times faster than ndarray.var() on a frame.
    flat = values.ravel().astype(np.float32)
    mean = float(flat.mean(dtype=np.float64))
    return mean, max(0.0, float(np.dot(flat, flat)) / flat.size - mean * mean)


def measure(grey: np.ndarray, size: tuple[int, int]) -> FrameMetrics:
    """Metrics of one uint8 analysis image from :func:`load_grey`."""
    g = grey.astype(np.int16)
    # 4-neighbour Laplacian on the interior, by slicing; int16 holds its -1020..1020 exactly.
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
    mean, variance = _mean_var(grey)
    # Normalised by the image's own variance so that a dark or hazy frame is not called blurred.
    sharpness = _mean_var(lap)[1] / variance if variance > 1e-6 else 0.0
    n = grey.size
    return FrameMetrics(
        width=size[0],
        height=size[1],
        sharpness=sharpness,
        brightness=mean,
        contrast=variance**0.5,
        dark_share=float(np.count_nonzero(grey <= DARK_LEVEL)) / n,
        bright_share=float(np.count_nonzero(grey >= BRIGHT_LEVEL)) / n,
    )


def thumbnail(grey: np.ndarray) -> np.ndarray:
    """Block-averaged grey image (float32) for frame-to-frame comparison."""
    return np.asarray(Image.fromarray(grey).reduce(THUMB_FACTOR), dtype=np.float32)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute grey difference of two thumbnails (inf when their shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a - b).mean())
