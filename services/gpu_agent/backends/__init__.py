"""Reconstruction backends: runner subprocesses that read a frame folder and write the outputs.

Every runner prints progress as JSON lines on stdout
(``{"stage": ..., "progress": 0..1, "message": ...}``), logs on stderr, and exits non-zero
with a last stderr line a person can act on.
"""

from __future__ import annotations

import sys
from pathlib import Path

from shared.gpu import BackendInfo, GpuInfo

#: Written atomically into the job folder by the gpu agent once every frame has landed
#: (JSON ``{"frames": N}``); a runner started with ``--follow`` matches and maps then.
#: lingbot_runner.py, which cannot import this package, spells the same name.
INGEST_DONE_NAME = ".ingest.done"
#: Files every backend writes into the job folder.
OUTPUT_FILES = ("reconstruction.ply", "cameras.json")
#: The progress stages each runner reports, in order (to turn them into one job progress).
RUNNER_STAGES = {
    "colmap": ("features", "matching", "mapping", "writing"),
    "lingbot": ("loading", "inference", "writing"),
}


#: The lingbot runner, run by LingBot-Map's own interpreter as a script (not with -m: that
#: environment has none of this project's packages).
LINGBOT_RUNNER = Path(__file__).resolve().parent / "lingbot_runner.py"


def runner_argv(backend: str, frames_dir: Path, out_dir: Path, *, threads: int,
                lingbot_python: Path | None = None, lingbot_checkpoint: Path | None = None,
                gpu_index: int | None = None, colmap_max_features: int | None = None,
                colmap_max_image_size: int | None = None, follow: bool = False) -> list[str]:  # fmt: skip
    """The runner's command line; ``follow``: it starts before the last frame lands (see INGEST_DONE_NAME)."""
    if backend == "colmap":
        argv = [sys.executable, "-m", "services.gpu_agent.backends.colmap_runner",
                "--frames", str(frames_dir), "--out", str(out_dir)]
        if colmap_max_features:
            argv += ["--max-features", str(colmap_max_features)]
        if colmap_max_image_size:
            argv += ["--max-image-size", str(colmap_max_image_size)]
        if threads > 0:
            argv += ["--threads", str(threads)]
        return argv + (["--follow"] if follow else [])
    if backend == "lingbot":
        if lingbot_python is None or lingbot_checkpoint is None:
            raise ValueError("backend 'lingbot' is not configured on this node (lingbot_python, lingbot_checkpoint)")
        return [str(lingbot_python), str(LINGBOT_RUNNER), "--frames", str(frames_dir), "--out", str(out_dir),
                "--checkpoint", str(lingbot_checkpoint),
                "--device", "cuda" if gpu_index is None else f"cuda:{gpu_index}"] + (["--follow"] if follow else [])  # fmt: skip
    raise ValueError(f"backend {backend!r} cannot run on this node")


def available_backends(gpus: list[GpuInfo], *, lingbot_python: Path | None = None,
                       lingbot_checkpoint: Path | None = None) -> list[BackendInfo]:  # fmt: skip
    """Which backends this node can run, and why not when it cannot."""
    reason = lingbot_unavailable(gpus, lingbot_python, lingbot_checkpoint)
    return [
        BackendInfo(name="colmap", available=True, device="cpu"),
        BackendInfo(name="lingbot", available=reason is None, device="gpu", reason=reason),
    ]


def lingbot_unavailable(gpus: list[GpuInfo], python: Path | None, checkpoint: Path | None) -> str | None:
    """Why LingBot-Map cannot run here, or None when it can."""
    if not gpus:
        return "lingbot: no GPU on this node"
    if python is None or checkpoint is None:
        return "lingbot: LingBot-Map is not configured on this node (set lingbot_python and lingbot_checkpoint)"
    if not Path(python).is_file():
        return f"lingbot: interpreter not found at {python}"
    if not Path(checkpoint).is_file():
        return f"lingbot: checkpoint not found at {checkpoint}"
    return None
