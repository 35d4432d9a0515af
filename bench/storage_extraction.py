"""Storage extraction benchmark: frames through the storage agent into a job folder vs plain ffmpeg.

For each generated 1080p video (H.264, HEVC; >= 60 s) and each sampling mode, the same
frames are made two ways, interleaved, several runs each:

* **agent** — a real storage agent (``cosma-qc storage-agent``, a subprocess) streams the
  tar, and the gpu agent's own ``services.gpu_agent.ingest.pull_video`` writes each frame
  into a job folder (temp name, fsync, rename), as a job does;
* **plain** — ``ffmpeg`` alone with the very same input options and filters (the agent's
  plan, ``showinfo`` taken out) writing ``frame_%06d.jpg`` files.

Reported: median wall time, frames/s, realtime factor (seconds of video per second), the
ratio agent/plain (target <= 1.10), the CPU-time ratio (all agent-side CPU: ffmpeg, the
agent, the ingesting client; steadier than wall time on a loaded machine) and the agent's peak RSS while streaming (``VmHWM``,
reset before each run through ``/proc/PID/clear_refs``; the ffmpeg child is not counted).

    .venv/bin/python bench/storage_extraction.py [--runs 3] [--codecs h264,hevc]
        [--modes fps,max_frames,keyframes] [--media /tmp/cosma-bench-media] [--write]

``--write`` replaces the "Storage extraction" section of ``bench/RESULTS.md``. Generated
videos are kept in ``--media`` and reused (HEVC needs libx265 in ffmpeg).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import re
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.gpu_agent import ingest  # noqa: E402
from services.storage_agent.frames import ExtractionPlan, plan_extraction  # noqa: E402
from services.storage_agent.probe import VideoFacts  # noqa: E402
from shared.jobs import ExtractParams, VideoSource  # noqa: E402
from shared.videos import FrameParams, VideoInfo  # noqa: E402

SECTION = "## Storage extraction"
RESULTS = ROOT / "bench" / "RESULTS.md"

#: name → ffmpeg encoder options; a noisy test pattern so the bit rate is camera-like.
VIDEOS = {
    "h264": ["-c:v", "libx264", "-preset", "veryfast", "-b:v", "12M", "-maxrate", "16M", "-bufsize", "16M",
             "-g", "30", "-pix_fmt", "yuv420p"],
    "hevc": ["-c:v", "libx265", "-preset", "ultrafast", "-b:v", "8M", "-x265-params", "keyint=30:log-level=error",
             "-pix_fmt", "yuv420p", "-tag:v", "hvc1"],
}

#: Sampling modes, as a job asks for them (640 px wide is the gpu agent's default).
MODES = {
    "fps": dict(fps=2.0, width=640),
    "max_frames": dict(fps=30.0, width=640, max_frames=100),
    "keyframes": dict(fps=30.0, width=640, keyframes=True),
}


@dataclass
class Run:
    wall_s: float
    frames: int
    cpu_s: float
    """CPU seconds: ffmpeg, plus for the agent its own process and the ingesting client."""
    peak_rss_mib: float | None = None


def _cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime: the process and its reaped children (ffmpeg)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15])


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def video_file(media: Path, codec: str, seconds: int) -> Path:
    path = media / f"{codec}_1080p_{seconds}s.mp4"
    if path.exists():
        return path
    media.mkdir(parents=True, exist_ok=True)
    h264 = media / f"h264_1080p_{seconds}s.mp4"
    if codec != "h264":
        source = ["-i", str(video_file(media, "h264", seconds))]  # re-encoding is far cheaper than noise
    else:
        source = ["-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate=30:duration={seconds},noise=alls=6:allf=t"]
    part = path.with_suffix(".part.mp4")
    print(f"generating {path.name} ...", file=sys.stderr, flush=True)
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *source, *VIDEOS[codec],
                    str(part)], check=True)
    part.rename(path)
    assert codec == "h264" or h264.exists()
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def storage_agent(root: Path, token: str):
    port = free_port()
    env = {**os.environ, "COSMA_TOKEN": token}
    argv = [str(ROOT / ".venv" / "bin" / "cosma-qc"), "storage-agent", "--roots", str(root), "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "--max-concurrent-extractions", "1"]
    proc = subprocess.Popen(argv, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the storage agent did not start")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _status_kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


@contextlib.contextmanager
def keyframes_query(enabled: bool):
    """The gpu agent's ExtractParams has no keyframes option yet: add it to pull_video's query."""
    if not enabled:
        yield
        return
    real = ingest.httpx.stream

    def stream(method, url, *, params=None, **kwargs):
        return real(method, url, params={**(params or {}), "keyframes": "true"}, **kwargs)

    ingest.httpx.stream = stream
    try:
        yield
    finally:
        ingest.httpx.stream = real


def run_agent(url: str, pid: int, token: str, path: str, mode: dict, work: Path) -> Run:
    job = work / "job_1"
    job.mkdir()
    extract = ExtractParams(**{k: v for k, v in mode.items() if k != "keyframes"})
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    with keyframes_query(mode.get("keyframes", False)):
        ticks, client_cpu = _cpu_ticks(pid), _self_cpu_s()
        started = time.perf_counter()
        frames = ingest.pull_video(VideoSource(storage_url=url, path=path), extract, job, video_index=0,
                                   first_frame=1, token=token, timeout_s=300, cancel=threading.Event(),
                                   on_frame=lambda *_: None)
        wall_s = time.perf_counter() - started
        time.sleep(0.2)  # the agent reaps ffmpeg just after the stream's end
        cpu_s = (_cpu_ticks(pid) - ticks) / os.sysconf("SC_CLK_TCK") + _self_cpu_s() - client_cpu
    peak = _status_kib(pid, "VmHWM") / 1024
    shutil.rmtree(job)
    return Run(wall_s, len(frames), cpu_s, peak)


def plain_argv(plan: ExtractionPlan, file: Path, out: Path) -> list[str]:
    """The agent's ffmpeg command writing files instead of a pipe, without showinfo (not needed here)."""
    argv = plan.argv(file)
    argv[argv.index("-loglevel") + 1] = "error"
    vf = argv.index("-vf") + 1
    argv[vf] = re.sub(r",showinfo[^,]*", "", argv[vf])
    assert argv[-7:-3] == ["-f", "image2pipe", "-c:v", "mjpeg"] and argv[-1] == "-"
    return argv[:-7] + ["-f", "image2", *argv[-5:-1], str(out / "frame_%06d.jpg")]


def run_plain(plan: ExtractionPlan, file: Path, work: Path) -> Run:
    out = work / "plain"
    out.mkdir()
    cpu, started = _children_cpu_s(), time.perf_counter()
    subprocess.run(plain_argv(plan, file, out), check=True)
    wall_s = time.perf_counter() - started
    cpu_s = _children_cpu_s() - cpu
    frames = len(list(out.iterdir()))
    shutil.rmtree(out)
    return Run(wall_s, frames, cpu_s)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    return f"{os.cpu_count()} vCPU {cpu}, Python {platform.python_version()}, {ffmpeg.split(' Copyright')[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--codecs", default="h264,hevc")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--media", type=Path, default=Path(tempfile.gettempdir()) / "cosma-bench-media")
    parser.add_argument("--write", action="store_true", help="replace the section in bench/RESULTS.md")
    args = parser.parse_args()
    codecs, modes = args.codecs.split(","), args.modes.split(",")
    files = {codec: video_file(args.media, codec, args.seconds) for codec in codecs}
    root = args.media / "root"
    root.mkdir(exist_ok=True)
    for file in files.values():
        if not (root / file.name).exists():
            os.link(file, root / file.name)
    token = secrets.token_hex(16)
    load_before = os.getloadavg()
    rows, started = [], time.perf_counter()
    with storage_agent(root, token) as (url, pid), tempfile.TemporaryDirectory(dir=args.media) as tmp:
        work = Path(tmp)
        baseline_mib = _status_kib(pid, "VmRSS") / 1024
        listing = httpx.get(f"{url}/videos", headers={"Authorization": f"Bearer {token}"}, timeout=120).json()
        infos = {v["path"]: VideoInfo.model_validate(v) for v in listing["videos"]}
        for codec in codecs:
            info = infos[files[codec].name]
            facts = VideoFacts(duration_s=info.duration_s, fps=info.fps, width=info.width, height=info.height,
                               codec=info.codec)
            for mode in modes:
                plan = plan_extraction(FrameParams(**MODES[mode]), facts)
                agent_runs, plain_runs = [], []
                for i in range(args.runs):
                    # Alternate who goes first, so a change of load falls on both.
                    pair = [(agent_runs, functools.partial(run_agent, url, pid, token, files[codec].name,
                                                           MODES[mode], work)),
                            (plain_runs, functools.partial(run_plain, plan, root / files[codec].name, work))]
                    for runs, step in (pair if i % 2 == 0 else pair[::-1]):
                        runs.append(step())
                    print(f"{codec} {mode} run {i + 1}: agent {agent_runs[-1].wall_s:.2f} s "
                          f"({agent_runs[-1].frames} frames), plain {plain_runs[-1].wall_s:.2f} s "
                          f"({plain_runs[-1].frames} frames)", file=sys.stderr, flush=True)
                rows.append(summarise(codec, mode, info.duration_s, agent_runs, plain_runs))
    load_after = os.getloadavg()
    text = report(rows, args, baseline_mib, load_before, load_after, time.perf_counter() - started)
    print(text)
    if args.write:
        write_section(text)


def summarise(codec, mode, duration_s, agent_runs, plain_runs) -> dict:
    agent_s = statistics.median(r.wall_s for r in agent_runs)
    plain_s = statistics.median(r.wall_s for r in plain_runs)
    frames = agent_runs[0].frames
    assert all(r.frames == frames for r in agent_runs + plain_runs), (codec, mode, agent_runs, plain_runs)
    return dict(codec=codec, mode=mode, frames=frames, agent_s=agent_s, plain_s=plain_s,
                agent_fps=frames / agent_s, plain_fps=frames / plain_s,
                agent_rt=duration_s / agent_s, plain_rt=duration_s / plain_s, ratio=agent_s / plain_s,
                cpu_ratio=statistics.median(r.cpu_s for r in agent_runs) / statistics.median(r.cpu_s for r in plain_runs),
                peak_mib=max(r.peak_rss_mib for r in agent_runs),
                spread=f"{min(r.wall_s for r in agent_runs):.1f}–{max(r.wall_s for r in agent_runs):.1f} / "
                       f"{min(r.wall_s for r in plain_runs):.1f}–{max(r.wall_s for r in plain_runs):.1f}")


def report(rows, args, baseline_mib, load_before, load_after, total_s) -> str:
    command = (f".venv/bin/python bench/storage_extraction.py --runs {args.runs} --codecs {args.codecs} "
               f"--modes {args.modes}" + (" --write" if args.write else ""))
    lines = [
        SECTION, "",
        "Frames of a generated 1080p30 video through the storage agent (`cosma-qc storage-agent` subprocess, "
        "tar stream on loopback) into a job folder by the gpu agent's `ingest.pull_video` (fsync + rename per "
        "frame), against plain `ffmpeg` with the same input options and filters writing the same JPEGs; "
        f"median of {args.runs} interleaved runs each (min–max in the last column). Modes: `fps` = 2 fps at "
        "640 px; `max_frames` = 100 frames spread over the video at 640 px (full decode, fps filter); "
        "`keyframes` = key frames only (`-skip_frame nokey`, one per second here) at 640 px. "
        "`CPU ratio`: median CPU seconds on the agent side (its ffmpeg, the agent, the ingesting client) over "
        "plain ffmpeg's; steadier than wall time when the machine is shared.",
        "", "    " + command, "",
        f"Machine: {machine()}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        f"(shared with colleagues' test suites: absolute figures are pessimistic, the ratio is what counts). "
        f"Total bench time {total_s / 60:.1f} min. The agent's RSS when idle: {baseline_mib:.0f} MiB.",
        "",
        "| video | mode | frames | agent s | plain s | ratio | CPU ratio | agent frames/s | plain frames/s | "
        "agent × realtime | plain × realtime | agent peak RSS MiB | agent / plain min–max s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['codec']} 1080p {args.seconds} s | {r['mode']} | {r['frames']} | {r['agent_s']:.2f} | "
                     f"{r['plain_s']:.2f} | {r['ratio']:.2f} | {r['cpu_ratio']:.2f} | {r['agent_fps']:.1f} | {r['plain_fps']:.1f} | "
                     f"{r['agent_rt']:.2f} | {r['plain_rt']:.2f} | {r['peak_mib']:.0f} | {r['spread']} |")
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    """Replace (or append) this benchmark's section, leaving the others as they are."""
    current = RESULTS.read_text() if RESULTS.exists() else ""
    start = current.find(SECTION + "\n")
    if start < 0:
        RESULTS.write_text(current.rstrip("\n") + "\n\n" + text)
        return
    following = re.search(r"^## ", current[start + len(SECTION):], re.M)
    end = start + len(SECTION) + following.start() if following else len(current)
    RESULTS.write_text(current[:start] + text + ("\n" + current[end:] if following else ""))


if __name__ == "__main__":
    main()
