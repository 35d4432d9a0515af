"""One job end to end through a real cluster, against its stages run alone.

Part of the benchmark suite (``bench/suite.py``, ``make bench``); also runnable alone:

    .venv/bin/python bench/e2e.py [--seconds 30] [--fps 2] [--rounds 1]

* **end to end**: ``cosma-qc core``, ``storage-agent`` and ``gpu-agent`` as processes on
  loopback (``services.demo.run.Cluster``), one colmap job submitted to the core and
  followed until ``done``; timed from the POST to the first poll that sees ``done`` (polls
  every 0.2 s, the core's scheduler ticks every 0.5 s). When the gpu agent has a streaming
  setting (reconstruction starting while frames land), the job runs once with it on and once
  with it off, each in a fresh cluster.
* **stages alone**: extraction = a storage agent process streaming the same frames into a
  folder through the gpu agent's own ``ingest.pull_video`` (with the ``frames.json`` the
  agent writes); reconstruction = the colmap runner (the agent's own command line,
  ``runner_argv``) on that folder.

The video is the demo's synthetic survey (``services/demo/synth.py``: rendered at ``fps``,
then upscaled to 1920x1080 at 30 fps with temporal noise, so the storage node decodes a
camera-like stream and the sampled frames are the rendered ones).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from services.demo.run import Cluster  # noqa: E402
from storage_extraction import free_port  # noqa: E402
from shared.auth import auth_headers  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.2
SCHEDULER_TICK_S = 0.5
JOB_TIMEOUT_S = 900
SERVICES = ("core", "storage-agent", "gpu-agent")


# -- measuring processes ------------------------------------------------------------------

def proc_cpu_s(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid``: the process and the children it has reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / CLK_TCK


def status_kib(pid: int, key: str) -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` (VmRSS, VmHWM); None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's ``children`` file)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                found += [int(p) for p in (task / "children").read_text().split()]
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (``clear_refs`` 5), so the next peak is this run's."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def pin(pid: int, cpus: set[int] | None) -> None:
    """Every thread of ``pid`` (and so what it starts later) on ``cpus``; None leaves it as is.

    ``--pin`` puts the storage agent (with its ffmpeg) and the core on CPU 0 and the gpu agent
    (with its backend) on CPU 1: two nodes of the field, each with its own CPU, on one host.
    """
    if cpus is None:
        return
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                os.sched_setaffinity(int(task.name), cpus)


#: CPUs of each service with ``--pin``; None: not pinned.
PINNED = {"storage-agent": {0}, "core": {0}, "gpu-agent": {1}}


# -- videos -------------------------------------------------------------------------------

def survey_video(out_dir: Path, *, seconds: float, fps: float, name: str = "GX010001.MP4",
                 render_size: tuple[int, int] = (640, 360), size: tuple[int, int] | None = (1920, 1080),
                 rate: float = 30.0, slow_down: float = 1.0) -> Path:
    """The demo's synthetic survey, ``seconds * fps`` rendered frames, as a camera-like file.

    ``size``/``rate``: upscaled and its frames repeated up to that frame rate, with temporal
    noise (a 1080p30 stream to decode, from cheap renders); ``None`` keeps the render as is.
    ``slow_down``: the flight plays that many times slower (a long video of the same frames).
    """
    from services.demo.synth import render_survey

    path = out_dir / name
    if path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        sample = render_survey(Path(tmp), seconds=seconds, fps=fps, width=render_size[0], height=render_size[1])
        if size is None and slow_down == 1.0:
            shutil.move(sample.video, path)
            return path
        filters = [f"setpts={slow_down}*PTS"]
        encode = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
        if size is not None:
            filters += [f"scale={size[0]}:{size[1]}:flags=bicubic", f"fps={rate}", "noise=alls=4:allf=t"]
            encode += ["-b:v", "12M", "-maxrate", "16M", "-bufsize", "16M", "-g", str(round(rate))]
        else:
            filters.append(f"fps={rate}")
            encode += ["-crf", "23", "-g", str(max(1, round(rate)))]
        part = out_dir / f".{name}.part.mp4"
        subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(sample.video),
                        "-vf", ",".join(filters), *encode, "-an", str(part)], check=True)
        part.rename(path)
    return path


# -- a cluster and one job ----------------------------------------------------------------

def stream_setting() -> str | None:
    """The gpu agent's setting that switches streaming into reconstruction, if it has one."""
    from services.gpu_agent.config import GpuAgentSettings

    names = [n for n, f in GpuAgentSettings.model_fields.items() if "stream" in n and f.annotation is bool]
    return names[0] if names else None


@dataclass
class JobRun:
    label: str
    wall_s: float
    """From the POST to the core to the first poll that sees the job done."""
    agent_s: float | None
    """On the gpu agent: from accepting the job to done (its own timestamps)."""
    ingest_end_s: float | None
    """Seconds after the POST at which the gpu agent first showed every frame pulled."""
    runner_start_s: float | None
    """Seconds after the POST at which the gpu agent first showed the backend running."""
    cpu_s: dict[str, float]
    frames: int
    state: str
    error: str | None = None
    streaming: bool = False
    """The gpu agent said the backend started while frames were still landing."""


class ServiceCluster:
    """Core + storage agent + gpu agent on loopback, nodes registered; stopped on exit."""

    def __init__(self, base: Path, videos: Path, *, gpu_args: list[str] = (), pinned: bool = False):
        self.pinned = pinned
        self.base = base
        self.videos = videos
        self.gpu_args = list(gpu_args)
        self.token = secrets.token_hex(16)
        self.cluster = Cluster(base, "127.0.0.1", self.token)
        self.urls: dict[str, str] = {}
        self.pids: dict[str, int] = {}

    def __enter__(self) -> ServiceCluster:
        try:
            self.urls["storage-agent"] = self.cluster.start(
                "storage-agent", ["--roots", str(self.videos), "--node-id", "storage-1", "--log-level", "warning"],
                free_port())
            self.urls["gpu-agent"] = self.cluster.start(
                "gpu-agent", ["--workdir", str(self.base / "frames"), "--node-id", "gpu-1", "--log-level", "warning",
                              *self.gpu_args], free_port())
            self.urls["core"] = self.cluster.start(
                "core", ["--data-dir", str(self.base / "core"), "--node-id", "core", "--log-level", "warning",
                         "--tick-interval-s", str(SCHEDULER_TICK_S)], free_port())
            self.pids = {name: proc.pid for name, proc in self.cluster.procs}
            for name, pid in self.pids.items():
                pin(pid, PINNED.get(name) if self.pinned else None)
            for name, role, url in (("storage-1", "storage", self.urls["storage-agent"]),
                                    ("gpu-1", "gpu", self.urls["gpu-agent"])):
                self.post("/api/v1/nodes", {"name": name, "role": role, "url": url})
        except BaseException:
            self.cluster.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.cluster.stop()

    def post(self, path: str, body: dict) -> dict:
        resp = httpx.post(self.urls["core"] + path, json=body, headers=auth_headers(self.token), timeout=60)
        if resp.status_code >= 400:
            raise RuntimeError(f"POST {path} answered HTTP {resp.status_code}: {resp.text[:300]}")
        return resp.json()

    def get(self, service: str, path: str) -> dict | None:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            resp = httpx.get(self.urls[service] + path, headers=auth_headers(self.token), timeout=10)
            if resp.status_code == 200:
                return resp.json()
        return None

    def run_job(self, label: str, body: dict, *, on_poll=None) -> JobRun:
        """Submit one job and follow it to its end; CPU of each service process over the job."""
        cpu_before = {name: proc_cpu_s(pid) for name, pid in self.pids.items()}
        started = time.perf_counter()
        job_id = self.post("/api/v1/jobs", body)["id"]
        ingest_end = runner_start = None
        streaming = False
        deadline = started + JOB_TIMEOUT_S
        while True:
            if on_poll:
                on_poll()
            job = self.get("core", f"/api/v1/jobs/{job_id}") or {}
            agent_job = self.get("gpu-agent", f"/jobs/{job_id}") or {}
            now = time.perf_counter() - started
            state = agent_job.get("state")
            streaming = streaming or bool(agent_job.get("streaming"))
            if ingest_end is None and ((agent_job.get("ingest_progress") or 0) >= 1 or state in ("reconstructing", "done")):
                ingest_end = now
            if runner_start is None and (agent_job.get("reconstruct_progress") is not None
                                         or state in ("reconstructing", "done")):
                runner_start = now
            if job.get("state") in ("done", "failed", "cancelled"):
                wall_s = now
                break
            if now > JOB_TIMEOUT_S:
                raise RuntimeError(f"{label}: job {job_id} did not end within {JOB_TIMEOUT_S} s (last: {job})")
            time.sleep(POLL_S)
        time.sleep(0.3)  # the agent reaps its runner, the storage agent its ffmpeg
        cpu = {name: proc_cpu_s(pid) - cpu_before[name] for name, pid in self.pids.items()}
        agent_job = self.get("gpu-agent", f"/jobs/{job_id}") or {}
        agent_s = None
        if agent_job.get("created_at") and agent_job.get("updated_at"):
            from datetime import datetime

            agent_s = (datetime.fromisoformat(agent_job["updated_at"])
                       - datetime.fromisoformat(agent_job["created_at"])).total_seconds()
        return JobRun(label, wall_s, agent_s, ingest_end, runner_start, cpu,
                      int(job.get("frames") or agent_job.get("frames") or 0), job.get("state", "?"), job.get("error"),
                      streaming)


# -- the stages alone ---------------------------------------------------------------------

@contextlib.contextmanager
def storage_agent(videos: Path, token: str, base: Path, args: list[str] = (), cpus: set[int] | None = None):
    """A ``cosma-qc storage-agent`` process serving ``videos`` (on ``cpus``); yields (URL, pid)."""
    cluster = Cluster(base, "127.0.0.1", token)
    try:
        url = cluster.start("storage-agent", ["--roots", str(videos), "--node-id", "storage-1",
                                              "--log-level", "warning", *args], free_port())
        pin(cluster.procs[0][1].pid, cpus)
        yield url, cluster.procs[0][1].pid
    finally:
        cluster.stop()


def extract_alone(url: str, pid: int, token: str, path: str, extract: dict, job_dir: Path) -> tuple[float, float, int]:
    """Pull one video's frames into ``job_dir`` as the gpu agent does; (wall s, CPU s, frames)."""
    from services.gpu_agent import ingest
    from shared.frames import FRAMES_INDEX_NAME, FrameIndex, IndexedVideo
    from shared.jobs import ExtractParams, VideoSource

    job_dir.mkdir(parents=True, exist_ok=True)
    source = VideoSource(storage_url=url, path=path)
    cpu0, self0 = proc_cpu_s(pid), self_cpu_s()
    started = time.perf_counter()
    frames = ingest.pull_video(source, ExtractParams(**extract), job_dir, video_index=0, first_frame=1,
                               token=token, timeout_s=300, cancel=threading.Event(), on_frame=lambda *_: None)
    info = ingest.fetch_video_info(source, token=token)
    index = FrameIndex(videos=[IndexedVideo(index=0, path=path, native_width=info.width if info else None,
                                            native_height=info.height if info else None)], frames=frames)
    ingest.atomic_write_bytes(job_dir / FRAMES_INDEX_NAME, index.model_dump_json(indent=1).encode())
    wall_s = time.perf_counter() - started
    time.sleep(0.2)  # the agent reaps ffmpeg just after the stream's end
    return wall_s, proc_cpu_s(pid) - cpu0 + self_cpu_s() - self0, len(frames)


def reconstruct_alone(frames_dir: Path, out_dir: Path, cpus: set[int] | None = None) -> tuple[float, float, int, list[str]]:
    """The colmap runner as the gpu agent starts it (on ``cpus``); (wall s, CPU s, peak RSS KiB, argv)."""
    from services.gpu_agent.backends import runner_argv
    from services.gpu_agent.config import GpuAgentSettings

    defaults = GpuAgentSettings.model_fields
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = runner_argv("colmap", frames_dir, out_dir, threads=defaults["backend_threads"].default,
                       colmap_max_features=defaults["colmap_max_features"].default,
                       colmap_max_image_size=defaults["colmap_max_image_size"].default)
    started = time.perf_counter()
    log = open(out_dir / "runner.log", "wb")
    with log:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT,
                                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall_s = time.perf_counter() - started
    if proc.returncode != 0:
        tail = (out_dir / "runner.log").read_text(errors="replace")[-600:]
        raise RuntimeError(f"the colmap runner failed (exit {proc.returncode}):\n{tail}")
    return wall_s, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, argv


# -- the benchmark ------------------------------------------------------------------------

@dataclass
class E2eResult:
    video: str
    frames: int
    extract: list[tuple[float, float]]
    """(wall s, CPU s) of each extraction alone."""
    reconstruct: list[tuple[float, float]]
    runs: list[JobRun]
    streaming: str | None
    commands: list[str]
    notes: list[str] = field(default_factory=list)


def median(values):
    import statistics

    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def run_e2e(media: Path, *, seconds: float, fps: float, rounds: int = 1, width: int = 640,
            log=print, pinned: bool = False) -> E2eResult:
    videos = media / "e2e-videos"
    video = survey_video(videos, seconds=seconds, fps=fps, name=f"GX01{int(seconds):04d}.MP4")
    name = video.name
    extract = {"fps": fps, "width": width}
    body = {"videos": [{"storage": "storage-1", "path": name}], "backend": "colmap", **extract}
    setting = stream_setting()
    flag = "--" + setting.replace("_", "-") if setting else None
    variants = [("end to end, streaming on", [flag]), ("end to end, streaming off", ["--no-" + flag[2:]])] \
        if flag else [("end to end", [])]
    result = E2eResult(f"{name}: synthetic survey, {seconds:g} s, 1920x1080 H.264 30 fps", 0, [], [], [], setting,
                       [])
    result.commands.append(f"cosma-qc core / storage-agent / gpu-agent [{' | '.join(' '.join(v) for _, v in variants)}] "
                           f"+ POST /api/v1/jobs {json.dumps(body)}")
    for round_ in range(rounds):
        steps = [("alone", None)] + [(label, args) for label, args in variants]
        if round_ % 2:
            steps.reverse()  # alternate who goes first, so a change of load falls on both
        for label, args in steps:
            with tempfile.TemporaryDirectory(dir=media, prefix="e2e-") as tmp:
                base = Path(tmp)
                if label == "alone":
                    token = secrets.token_hex(16)
                    with storage_agent(videos, token, base,
                                       cpus=PINNED["storage-agent"] if pinned else None) as (url, pid):
                        wall, cpu, frames = extract_alone(url, pid, token, name, extract, base / "job")
                    result.extract.append((wall, cpu))
                    log(f"e2e: extraction alone {wall:.1f} s ({cpu:.1f} s CPU, {frames} frames)")
                    wall, cpu, _, argv = reconstruct_alone(base / "job", base / "job",
                                                           cpus=PINNED["gpu-agent"] if pinned else None)
                    result.reconstruct.append((wall, cpu))
                    result.frames = frames
                    log(f"e2e: reconstruction alone {wall:.1f} s ({cpu:.1f} s CPU)")
                    command = " ".join(argv).replace(sys.executable, ".venv/bin/python").replace(str(base), "JOB")
                    if command not in result.commands:
                        result.commands.append(command)
                else:
                    with ServiceCluster(base, videos, gpu_args=args, pinned=pinned) as cluster:
                        run = cluster.run_job(label, body)
                    if run.state != "done":
                        raise RuntimeError(f"{label}: the job ended {run.state}: {run.error}")
                    result.runs.append(run)
                    log(f"e2e: {label} {run.wall_s:.1f} s ({sum(run.cpu_s.values()):.1f} s CPU, {run.frames} frames)")
    if not flag:
        result.notes.append("The gpu agent has no streaming setting yet (no boolean setting named *stream*): "
                            "one end-to-end variant, extraction then reconstruction.")
    return result


def table(result: E2eResult) -> list[str]:
    """Markdown rows: each end-to-end variant against the sum and the max of the stages alone."""
    ext_w, ext_c = median(w for w, _ in result.extract), median(c for _, c in result.extract)
    rec_w, rec_c = median(w for w, _ in result.reconstruct), median(c for _, c in result.reconstruct)
    slowest, total = max(ext_w, rec_w), ext_w + rec_w
    lines = ["| run | wall s | CPU s | vs max of stages | vs sum of stages | on the gpu agent s | all frames in at s | "
             "backend started at s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| extraction alone | {ext_w:.1f} | {ext_c:.1f} | {ext_w / slowest:.2f} | {ext_w / total:.2f} | | | |",
             f"| reconstruction alone | {rec_w:.1f} | {rec_c:.1f} | {rec_w / slowest:.2f} | {rec_w / total:.2f} | | | |",
             f"| sum of stages | {total:.1f} | {ext_c + rec_c:.1f} | {total / slowest:.2f} | 1.00 | | | |"]
    for label in dict.fromkeys(r.label for r in result.runs):
        runs = [r for r in result.runs if r.label == label]
        wall = median(r.wall_s for r in runs)
        cpu = median(sum(r.cpu_s.values()) for r in runs)
        cells = ["" if v is None else f"{v:.1f}" for v in (median(r.agent_s for r in runs),
                                                            median(r.ingest_end_s for r in runs),
                                                            median(r.runner_start_s for r in runs))]
        streamed = " (streamed)" if any(r.streaming for r in runs) else ""
        lines.append(f"| {label} | **{wall:.1f}** | {cpu:.1f} | **{wall / slowest:.2f}** | {wall / total:.2f} | "
                     f"{cells[0]} | {cells[1]} | {cells[2]}{streamed} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--fps", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--pin", action="store_true",
                        help="storage agent and core on CPU 0, gpu agent and its backend on CPU 1 (two nodes on one host)")
    args = parser.parse_args(argv)
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        parser.error("--pin needs two CPUs")
    with tempfile.TemporaryDirectory(prefix="cosma-bench-e2e-") as tmp:
        result = run_e2e(Path(tmp), seconds=args.seconds, fps=args.fps, rounds=args.rounds,
                         log=lambda m: print(m, file=sys.stderr, flush=True), pinned=args.pin)
    print("\n".join(table(result)))


if __name__ == "__main__":
    main()
