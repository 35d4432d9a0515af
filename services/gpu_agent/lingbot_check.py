"""``cosma-qc lingbot-check``: run LingBot-Map once on this GPU node and report what it took.

For an operator on a GPU node with the real checkpoint: runs the same runner the agent
runs (LingBot-Map's interpreter, ``backends/lingbot_runner.py``) on a frame folder, or on
frames it generates (a textured plane seen by a camera sliding along it), then prints the
VRAM peak against the estimate in ``shared/vram.py``, frames per second, the point count,
and which reading of the model's poses (camera-to-world or world-to-camera) is consistent
with its depth. Calibrate ``shared/vram.py`` from what it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from services.gpu_agent.backends import runner_argv
from shared.frames import FRAME_NAME_FORMAT

STATS_NAME = "lingbot_stats.json"


def add_lingbot_check_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("--python", type=Path, default=env("COSMA_GPU_LINGBOT_PYTHON"),
                        help="LingBot-Map's python (default: env COSMA_GPU_LINGBOT_PYTHON)")
    parser.add_argument("--checkpoint", type=Path, default=env("COSMA_GPU_LINGBOT_CHECKPOINT"),
                        help="LingBot-Map checkpoint (default: env COSMA_GPU_LINGBOT_CHECKPOINT)")
    parser.add_argument("--frames", type=Path, default=None,
                        help="folder of frame_NNNNNN.jpg (default: generate --count frames)")
    parser.add_argument("--count", type=int, default=240, help="frames to generate (default: 240)")
    parser.add_argument("--width", type=int, default=640, help="width of generated frames, 16:9 (default: 640)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a temporary one)")
    parser.add_argument("--gpu", type=int, default=None, help="CUDA device index (default: cuda)")
    parser.add_argument("--device", default=None, help="torch device, overriding --gpu (e.g. cpu)")
    parser.add_argument("--tier", default="auto", help="memory tier: auto, large, medium, small (default: auto)")
    parser.add_argument("--mode", default="auto", help="auto, streaming or windowed (default: auto)")


def cmd_lingbot_check(args: argparse.Namespace) -> int:
    if args.python is None or args.checkpoint is None:
        raise SystemExit("lingbot-check needs --python and --checkpoint (or COSMA_GPU_LINGBOT_PYTHON/_CHECKPOINT)")
    for what, path in (("interpreter", args.python), ("checkpoint", args.checkpoint)):
        if not Path(path).is_file():
            raise SystemExit(f"lingbot-check: {what} not found at {path}")
    with tempfile.TemporaryDirectory(prefix="lingbot-check-") as tmp:
        frames = args.frames
        if frames is None:
            frames = Path(tmp) / "frames"
            print(f"generating {args.count} frames of {args.width}x{round(args.width * 9 / 16)} in {frames}")
            generate_frames(frames, args.count, args.width)
        out = args.out or Path(tmp) / "out"
        argv = runner_argv("lingbot", frames, out, threads=0, lingbot_python=args.python,
                           lingbot_checkpoint=args.checkpoint, gpu_index=args.gpu)  # fmt: skip
        argv += ["--tier", args.tier, "--mode", args.mode] + (["--device", args.device] if args.device else [])
        started = time.monotonic()
        rc = run_runner(argv)
        wall_s = time.monotonic() - started
        if rc != 0:
            print(f"lingbot-check: the runner failed (exit {rc}); its last stderr line says why", file=sys.stderr)
            return 1
        stats = json.loads((out / STATS_NAME).read_text())
        for line in summarize(stats, wall_s):
            print(line)
    return 0


def run_runner(argv: list[str]) -> int:
    """Run the runner (its stderr passes through), printing progress every 10 %."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True, text=True)
    shown = -1
    try:
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            step = int(float(event.get("progress", 0)) * 10)
            if event.get("stage") != "inference" or step != shown or "retrying" in event.get("message", ""):
                shown = step if event.get("stage") == "inference" else -1
                print(f"  {event.get('stage')}: {100 * float(event.get('progress', 0)):5.1f}%  {event.get('message', '')}",
                      flush=True)  # fmt: skip
        return proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def summarize(stats: dict, wall_s: float) -> list[str]:
    p = stats["parameters"]
    lines = [
        f"LingBot-Map: {stats['version']} on {p['device']} ({p['dtype']}, {p['attention']})",
        (f"frames: {stats['frames']} at {p['input_width']}x{p['input_height']}, {p['mode']} mode, "
         f"keyframe interval {p['keyframe_interval']}"),
        (f"tier: {p['tier']} (scale frames {p['scale_frames']}, window {p['kv_cache_window']}, camera iterations "
         f"{p['camera_iterations']})") + (f"; out of memory first at {', '.join(p['retried_tiers'])}"
                                          if p["retried_tiers"] else ""),
        (f"VRAM peak: {stats['vram_peak_mib']} MiB allocated, {stats['vram_reserved_peak_mib']} MiB reserved; "
         f"estimated {stats['estimated_vram_mib']} MiB; free at start {stats['free_vram_mib_at_start']} MiB"),
        f"speed: {stats['fps']} frames/s ({stats['inference_s']} s of inference, {wall_s:.1f} s in all)",
        f"points: {stats['points']}",
    ]  # fmt: skip
    c2w, w2c = stats["pose_consistency"].get("c2w"), stats["pose_consistency"].get("w2c")
    if c2w is None or w2c is None:
        lines.append("pose convention: not enough overlap between the first frames to check")
    else:
        verdict = "camera-to-world, as the runner assumes" if c2w <= w2c else (
            "WORLD-TO-CAMERA: set MODEL_POSE_IS_C2W = False in lingbot_math.py")  # fmt: skip
        lines.append(f"pose convention: depth disagreement {c2w:.4f} read as c2w, {w2c:.4f} as w2c -> {verdict}")
    return lines


def generate_frames(folder: Path, count: int, width: int, *, seed: int = 0) -> None:
    """A multi-scale noise texture on a plane, seen by a camera sliding along it."""
    from PIL import Image

    height = round(width * 9 / 16)
    step = max(2, width // 80)
    rng = np.random.default_rng(seed)
    tex_h, tex_w = height, width + step * count
    texture = np.zeros((tex_h, tex_w, 3))
    for cell in (64, 16, 4):
        coarse = rng.random((tex_h // cell + 2, tex_w // cell + 2, 3))
        texture += np.kron(coarse, np.ones((cell, cell, 1)))[:tex_h, :tex_w] / 3
    texture = (255 * texture).clip(0, 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        crop = texture[:, k * step : k * step + width]
        Image.fromarray(crop).save(folder / FRAME_NAME_FORMAT.format(k + 1), quality=90)
