"""Peak memory of each service for a 10-minute video against a 1-minute one.

Part of the benchmark suite (``bench/suite.py``, ``make bench``); also runnable alone:

    .venv/bin/python bench/memory.py [--seconds 60] [--factor 10]

One cluster (``cosma-qc core``, ``storage-agent``, ``gpu-agent`` processes on loopback, see
``bench/e2e.py``) runs two colmap jobs one after the other: a short video and one ``factor``
times longer. Both videos are the demo's synthetic survey at 320x180, 2 fps, made from the
same rendered frames (the long one plays the flight ``factor`` times slower), and each job
samples exactly those frames (1 fps and 1/``factor`` fps): the reconstruction gets the same
work, and only the video's length changes: what the storage agent decodes and streams, how
long the ingest and the services run.

Measured: each service's peak RSS over its job (``VmHWM``, reset with ``clear_refs`` before
the job), and the peak of each child process (the storage agent's ffmpeg, the gpu agent's
backend runner), read every 0.1 s while it lives.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from e2e import ServiceCluster, children, command_line, reset_peak, status_kib, survey_video  # noqa: E402

SAMPLE_S = 0.1
WIDTH = 320
#: Processes reported: the three services, then the children that do the heavy work.
ROLES = ("core", "storage-agent", "storage ffmpeg", "gpu-agent", "backend runner")


class PeakSampler:
    """Reads VmHWM of the services and of their children every ``SAMPLE_S`` in a thread."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _role(self, parent: str, pid: int) -> str | None:
        cmd = command_line(pid)
        if parent == "storage-agent" and "ffmpeg" in cmd:
            return "storage ffmpeg"
        if parent == "gpu-agent" and "_runner" in cmd:
            return "backend runner"
        return None

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self._note(name, pid)
            if name in ("storage-agent", "gpu-agent"):
                for child in children(pid):
                    role = self._role(name, child)
                    if role:
                        self._note(role, child)

    def _note(self, role: str, pid: int) -> None:
        kib = status_kib(pid, "VmHWM")
        if kib is not None:
            self.peaks[role] = max(self.peaks.get(role, 0), kib)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def __enter__(self) -> PeakSampler:
        for pid in self.pids.values():
            reset_peak(pid)
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()


@dataclass
class MemoryRun:
    label: str
    video_s: float
    frames: int
    wall_s: float
    peaks_kib: dict[str, int]


@dataclass
class MemoryResult:
    idle_kib: dict[str, int]
    runs: list[MemoryRun]
    commands: list[str] = field(default_factory=list)


def _label(seconds: float) -> str:
    return f"{seconds / 60:g}-minute video" if seconds >= 60 else f"{seconds:g} s video"


def run_memory(media: Path, *, seconds: float = 60, factor: int = 10, log=print) -> MemoryResult:
    videos = media / "memory-videos"
    short = survey_video(videos, seconds=seconds, fps=1, name="GX010060.MP4", render_size=(WIDTH, 180), size=None,
                         rate=2)
    long = survey_video(videos, seconds=seconds, fps=1, name="GX010600.MP4", render_size=(WIDTH, 180), size=None,
                        rate=2, slow_down=factor)
    jobs = [(_label(seconds), seconds, short.name, 1.0),
            (_label(seconds * factor), seconds * factor, long.name, 1 / factor)]
    result = MemoryResult({}, [])
    with tempfile.TemporaryDirectory(dir=media, prefix="memory-") as tmp, \
            ServiceCluster(Path(tmp), videos) as cluster:
        time.sleep(1.0)
        result.idle_kib = {name: status_kib(pid, "VmRSS") or 0 for name, pid in cluster.pids.items()}
        for label, video_s, name, fps in jobs:
            body = {"videos": [{"storage": "storage-1", "path": name}], "backend": "colmap", "fps": fps,
                    "width": WIDTH}
            result.commands.append(f"POST /api/v1/jobs {json.dumps(body)}")
            with PeakSampler(cluster.pids) as sampler:
                run = cluster.run_job(label, body)
            if run.state != "done":
                raise RuntimeError(f"memory, {label}: the job ended {run.state}: {run.error}")
            result.runs.append(MemoryRun(label, video_s, run.frames, run.wall_s, dict(sampler.peaks)))
            log(f"memory: {label}: {run.frames} frames in {run.wall_s:.1f} s; peaks MiB "
                + ", ".join(f"{k} {v / 1024:.0f}" for k, v in sampler.peaks.items()))
    return result


def table(result: MemoryResult) -> list[str]:
    short, long = result.runs[0], result.runs[-1]
    lines = [f"| process | idle RSS MiB | peak MiB, {short.label} ({short.frames} frames) | "
             f"peak MiB, {long.label} ({long.frames} frames) | long / short |",
             "| --- | --- | --- | --- | --- |"]
    for role in ROLES:
        a, b = short.peaks_kib.get(role), long.peaks_kib.get(role)
        idle = result.idle_kib.get(role)
        cells = ["" if v is None else f"{v / 1024:.0f}" for v in (idle, a, b)]
        ratio = f"**{b / a:.2f}**" if a and b else "not seen"
        lines.append(f"| {role} | {cells[0]} | {cells[1]} | {cells[2]} | {ratio} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--factor", type=int, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cosma-bench-memory-") as tmp:
        result = run_memory(Path(tmp), seconds=args.seconds, factor=args.factor,
                            log=lambda m: print(m, file=sys.stderr, flush=True))
    print("\n".join(table(result)))


if __name__ == "__main__":
    main()
