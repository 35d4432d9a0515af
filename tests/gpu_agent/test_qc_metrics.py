"""Frame metrics and the frame rules, on real JPEG files made from numpy images with Pillow."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from services.gpu_agent.qc import metrics
from services.gpu_agent.qc.frames import CSV_NAME, FrameQc, FrameRow, judge, ranges
from shared.frames import IndexedFrame
from shared.qc import FrameFilter, FrameRange, QcThresholds


def texture(width: int = 640, height: int = 360, seed: int = 0) -> Image.Image:
    """Smooth random texture with detail at several scales (a stand-in for a seabed)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width), np.float32)
    for cell, weight in ((64, 1.0), (16, 0.6), (4, 0.4), (2, 0.3)):
        coarse = rng.uniform(0, 1, (height // cell + 2, width // cell + 2)).astype(np.float32)
        up = Image.fromarray(coarse).resize((width + 2 * cell, height + 2 * cell), Image.Resampling.BICUBIC)
        image += weight * np.asarray(up)[cell : cell + height, cell : cell + width]
    image = (image - image.min()) / (image.max() - image.min()) * 200 + 25
    return Image.fromarray(image.astype(np.uint8)).convert("RGB")


def save(image: Image.Image, path: Path) -> Path:
    image.save(path, "JPEG", quality=92)
    return path


def measure(path: Path) -> metrics.FrameMetrics:
    return metrics.analyse(path)[0]


def test_blur_lowers_sharpness_and_scale_does_not_change_it(tmp_path):
    sharp = measure(save(texture(), tmp_path / "sharp.jpg"))
    blurred = measure(save(texture().filter(ImageFilter.GaussianBlur(2)), tmp_path / "blur.jpg"))
    assert blurred.sharpness < 0.3 * sharp.sharpness
    for width, height in ((1280, 720), (1920, 1080)):
        big = measure(save(texture().resize((width, height), Image.Resampling.LANCZOS), tmp_path / "big.jpg"))
        assert big.sharpness == pytest.approx(sharp.sharpness, rel=0.25)  # analysed at the same 640 px
        assert (big.width, big.height) == (width, height)


def test_a_dark_frame_is_not_called_blurred(tmp_path):
    bright = measure(save(texture(), tmp_path / "bright.jpg"))
    dark_pixels = (np.asarray(texture(), np.float32) * 0.3).astype(np.uint8)
    dark = measure(save(Image.fromarray(dark_pixels), tmp_path / "dark.jpg"))
    assert dark.brightness < 0.4 * bright.brightness
    # The raw var(Laplacian) falls with the square of the contrast (here ~11x); the normalised
    # measure does not fall (JPEG and rounding noise even raise it a little).
    assert dark.sharpness > 0.8 * bright.sharpness
    assert bright.sharpness > QcThresholds().sharpness_min


def test_brightness_clipping_and_uniform_frames(tmp_path):
    pixels = np.asarray(texture(), np.uint8).copy()
    pixels[:, :320] = 255
    half = measure(save(Image.fromarray(pixels), tmp_path / "half.jpg"))
    assert half.bright_share == pytest.approx(0.5, abs=0.03) and half.dark_share < 0.01
    grey = measure(save(Image.new("RGB", (640, 360), (90, 90, 90)), tmp_path / "grey.jpg"))
    assert grey.contrast < 1 and grey.sharpness == 0.0


def frame(i: int) -> IndexedFrame:
    return IndexedFrame(name=f"frame_{i:06d}.jpg", index=i, video=0, t_s=i / 2)


def test_frame_qc_flags_black_and_frozen_frames_as_they_land(tmp_path):
    images = [texture(seed=1), texture(seed=2), texture(seed=2), Image.new("RGB", (640, 360)), texture(seed=2),
              texture(seed=3)]  # fmt: skip
    qc = FrameQc(tmp_path, QcThresholds())
    rows = [qc.observe(frame(i + 1), save(img, tmp_path / frame(i + 1).name)) for i, img in enumerate(images)]
    assert [r.black for r in rows] == [False, False, False, True, False, False]
    # Frame 5 repeats frame 3 across a black frame: still a duplicate of the last kept frame.
    assert [r.duplicate for r in rows] == [False, False, True, False, True, False]
    with open(tmp_path / CSV_NAME, newline="") as fh:
        records = list(csv.DictReader(fh))
    assert [r["duplicate"] for r in records] == ["0", "0", "1", "0", "1", "0"]


def row(i: int, sharpness: float, **flags) -> FrameRow:
    return FrameRow(frame=i, name=frame(i).name, video=0, t_s=i / 2, width=640, height=360, sharpness=sharpness,
                    brightness=120, contrast=50, dark_share=0, bright_share=0, diff_prev=30,
                    black=flags.get("black", False), duplicate=flags.get("duplicate", False))  # fmt: skip


def test_neighbour_rule_finds_a_dip_that_the_fixed_threshold_misses():
    rng = np.random.default_rng(0)
    values = 0.2 * (1 + 0.15 * rng.standard_normal(40))  # ±15% wobble: no false alarm
    values[[12, 25, 26]] *= 0.4  # blurred, but above the fixed threshold
    rows = [row(i + 1, float(v)) for i, v in enumerate(values)]
    rows[30].black = True
    rows[30].sharpness = 0.001
    judge(rows, QcThresholds(sharpness_min=0.03), FrameFilter(enabled=False))
    assert [r.frame for r in rows if r.blurry] == [13, 26, 27]
    assert not rows[30].blurry  # black frames are judged as black, not as blurry


def test_filter_drops_by_reason_and_percentile():
    rows = [row(i, 0.2 + 0.001 * i) for i in range(1, 21)]
    rows[2].black = True
    rows[5].duplicate = True
    rows[9].sharpness = 0.01
    judge(rows, QcThresholds(), FrameFilter(enabled=True, blurry_percentile=10))
    dropped = {r.frame: r.dropped_for for r in rows if r.dropped_for}
    assert dropped == {3: "black", 6: "duplicate", 10: "blurry", 1: "blurry_percentile"}
    judge(rows, QcThresholds(), FrameFilter(enabled=True, black=False, duplicates=False, blurry=False))
    assert not any(r.dropped_for for r in rows)


def test_ranges_compress_consecutive_frames():
    assert ranges([9, 3, 4, 5, 11]) == [FrameRange(first=3, last=5), FrameRange(first=9, last=9),
                                         FrameRange(first=11, last=11)]  # fmt: skip
    assert str(FrameRange(first=310, last=402)) == "310–402"


def test_observe_is_thread_safe_and_resume_keeps_only_known_frames(tmp_path):
    for i in range(1, 13):
        save(texture(320, 180, seed=i), tmp_path / frame(i).name)
    qc = FrameQc(tmp_path, QcThresholds())
    threads = [threading.Thread(target=lambda k=k: [qc.observe(frame(i), tmp_path / frame(i).name)
                                                    for i in range(k, 13, 3)]) for k in (1, 2, 3)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.frame for r in qc.rows()] == list(range(1, 13))
    lines = (tmp_path / CSV_NAME).read_text().splitlines()
    assert len(lines) == 13
    # A crash cut the last line short; the agent restarts with frames 1-8 still valid.
    (tmp_path / CSV_NAME).write_text("\n".join(lines) + "\n13,frame_0000")
    again = FrameQc(tmp_path, QcThresholds())
    again.resume([frame(i) for i in range(1, 9)])
    assert [r.frame for r in again.rows()] == list(range(1, 9))
    assert len((tmp_path / CSV_NAME).read_text().splitlines()) == 9
    assert again.observe(frame(9), tmp_path / frame(9).name).diff_prev is not None  # compared with frame 8


def test_unreadable_frame_counts_as_black(tmp_path):
    (tmp_path / frame(1).name).write_bytes(b"not a jpeg")
    r = FrameQc(tmp_path, QcThresholds()).observe(frame(1), tmp_path / frame(1).name)
    assert r.black and r.width == 0
