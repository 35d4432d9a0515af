"""Reconstruction backends: runner subprocesses that read a frame folder and write the outputs.

Every runner prints progress as JSON lines on stdout
(``{"stage": ..., "progress": 0..1, "message": ...}``), logs on stderr, and exits non-zero
with a last stderr line a person can act on.
"""

from __future__ import annotations

import sys
from pathlib import Path

from shared.gpu import BackendInfo, GpuInfo

#: Files every backend writes into the job folder.
OUTPUT_FILES = ("reconstruction.ply", "cameras.json")


def runner_argv(backend: str, frames_dir: Path, out_dir: Path, *, threads: int) -> list[str]:
    if backend == "colmap":
        argv = [sys.executable, "-m", "services.gpu_agent.backends.colmap_runner",
                "--frames", str(frames_dir), "--out", str(out_dir)]
        if threads > 0:
            argv += ["--threads", str(threads)]
        return argv
    raise ValueError(f"backend {backend!r} cannot run on this node")


def available_backends(gpus: list[GpuInfo]) -> list[BackendInfo]:
    """Which backends this node can run, and why not when it cannot."""
    return [
        BackendInfo(name="colmap", available=True, device="cpu"),
        BackendInfo(
            name="lingbot", available=False, device="gpu",
            reason=("lingbot: no GPU on this node" if not gpus else
                    "lingbot: LingBot-Map is not configured on this node (no interpreter/checkpoint)"),
        ),
    ]
