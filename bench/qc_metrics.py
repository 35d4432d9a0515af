"""Cost of the per-frame QC metrics, in milliseconds per frame, at two frame sizes.

    .venv/bin/python bench/qc_metrics.py [--frames 200]

Frames are textured JPEGs (quality 92) made with numpy and Pillow. Three figures per size:
``decode`` (JPEG to grey at 640 px wide), ``metrics`` (sharpness, brightness, clipping,
thumbnail) and ``observe`` (what the ingest thread pays per frame: both, the near-duplicate
test and the CSV line). The median of the per-frame times is reported.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from services.gpu_agent.qc import metrics
from services.gpu_agent.qc.frames import FrameQc
from shared.frames import IndexedFrame
from shared.qc import QcThresholds

SIZES = ((640, 360), (1920, 1080))


def textured(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width), np.float32)
    for cell, weight in ((max(width // 10, 8), 1.0), (32, 0.6), (8, 0.4), (2, 0.3)):
        coarse = rng.uniform(0, 1, (height // cell + 2, width // cell + 2)).astype(np.float32)
        image += weight * np.asarray(Image.fromarray(coarse).resize((width + 2 * cell, height + 2 * cell),
                                                                    Image.Resampling.BICUBIC))[:height, :width]
    image = (image - image.min()) / (image.max() - image.min()) * 220 + 15
    return Image.fromarray(image.astype(np.uint8)).convert("RGB")


def timed(fn, paths: list[Path]) -> float:
    times = []
    for path in paths:
        start = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200, help="frames per size (default: 200)")
    args = parser.parse_args()
    print(f"{'size':>10} {'decode':>8} {'metrics':>8} {'observe':>8}  (ms/frame, median of {args.frames})")
    for width, height in SIZES:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            # A handful of distinct images, reused: decoding cost does not depend on which.
            images = [textured(width, height, seed) for seed in range(8)]
            paths = []
            for i in range(args.frames):
                path = tmp / f"frame_{i + 1:06d}.jpg"
                images[i % len(images)].save(path, "JPEG", quality=92)
                paths.append(path)
            decode = timed(metrics.load_grey, paths)
            greys = {p: metrics.load_grey(p) for p in paths[:50]}
            metric = timed(lambda p: (metrics.measure(*greys[p]), metrics.thumbnail(greys[p][0])), list(greys))
            qc = FrameQc(tmp, QcThresholds())
            frames = {p: IndexedFrame(name=p.name, index=i + 1, video=0, t_s=i / 2) for i, p in enumerate(paths)}
            observe = timed(lambda p: qc.observe(frames[p], p), paths)
        print(f"{width}x{height:<5} {decode:8.2f} {metric:8.2f} {observe:8.2f}")


if __name__ == "__main__":
    main()
