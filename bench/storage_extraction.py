"""Storage extraction benchmark: frames through the storage agent into a job folder vs plain ffmpeg,
and the speed-up of segment-parallel decoding per ffmpeg process count.

**agent vs plain.** For each generated 1080p video (H.264, HEVC; >= 60 s) and each sampling
mode, the same frames are made two ways, interleaved, several runs each:

* **agent** — a real storage agent (``cosma-qc storage-agent``, a subprocess) streams the
  tar, and the gpu agent's own ``services.gpu_agent.ingest.pull_video`` writes each frame
  into a job folder (temp name, fsync, rename), as a job does;
* **plain** — ``ffmpeg`` alone with the very same input options and filters (the agent's
  plan, ``showinfo`` taken out) writing ``frame_%06d.jpg`` files.

Reported: median wall time, frames/s, realtime factor (seconds of video per second), the
ratio agent/plain (target <= 1.10), the CPU-time ratio (all agent-side CPU: ffmpeg, the
agent, the ingesting client; steadier than wall time on a loaded machine) and the agent's peak RSS while streaming (``VmHWM``,
reset before each run through ``/proc/PID/clear_refs``; the ffmpeg child is not counted).

**segments.** A longer video (``--segment-seconds``, the 60 s one looped with ``-c copy``)
through one agent allowed ``max(--processes)`` decode processes, ``fps`` mode, the frames
route's ``segments=N`` for each N of ``--processes`` (default 1..cores), interleaved; the
speed-up is wall(1) / wall(N), CPU seconds beside it, and every N must give the same frames.

    .venv/bin/python bench/storage_extraction.py [--runs 3] [--codecs h264,hevc]
        [--modes fps,max_frames,keyframes] [--parts agent,segments] [--processes 1,2]
        [--segment-seconds 180] [--media /tmp/cosma-bench-media] [--quick] [--write]

``--quick`` (a suite's few minutes): one run, 20 s videos (cut from longer ones when the
media folder has them), fps and keyframes, segments of 10 s with 1 and all cores (a smoke run: one run of
short segments is noise on a loaded machine; the full run gives the figures). ``--write`` replaces the "Storage extraction" section
of ``bench/RESULTS.md`` with what ran. Generated videos are kept in ``--media`` and reused
(HEVC needs libx265 in ffmpeg).

From Python: ``bench(...)`` (same options as keywords) returns a :class:`Report`: its
``rows`` and ``segment_rows`` (dicts) and ``text``, the Markdown section with its tables.
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
    longer = sorted((p for p in media.glob(f"{codec}_1080p_*s.mp4") if _seconds_of(p) > seconds), key=_seconds_of)
    if longer:  # the start of a longer one, streams copied: seconds instead of minutes of encoding
        part = path.with_suffix(".part.mp4")
        subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(longer[0]),
                        "-c", "copy", "-t", str(seconds), str(part)], check=True)
        part.rename(path)
        return path
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


def _seconds_of(path: Path) -> int:
    match = re.search(r"_(\d+)s\.mp4$", path.name)
    return int(match.group(1)) if match else 0


def long_video(media: Path, codec: str, seconds: int, base_seconds: int = 60) -> Path:
    """A ``seconds`` long video: the ``base_seconds`` one looped, streams copied (no re-encoding)."""
    if seconds <= base_seconds:
        return video_file(media, codec, seconds)
    base = video_file(media, codec, base_seconds)
    path = media / f"{codec}_1080p_{seconds}s.mp4"
    if not path.exists():
        part = path.with_suffix(".part.mp4")
        loops = -(-seconds // base_seconds) - 1
        subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-stream_loop", str(loops),
                        "-i", str(base), "-c", "copy", "-t", str(seconds), str(part)], check=True)
        part.rename(path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def storage_agent(root: Path, token: str, args: list[str] = ()):
    port = free_port()
    env = {**os.environ, "COSMA_TOKEN": token}
    argv = [str(ROOT / ".venv" / "bin" / "cosma-qc"), "storage-agent", "--roots", str(root), "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "--max-concurrent-extractions", "1", *args]
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
def frames_query(**extra):
    """Add ``extra`` to the query of the frames request ``pull_video`` makes (options a job has not)."""
    if not extra:
        yield
        return
    real = ingest.httpx.stream

    def stream(method, url, *, params=None, **kwargs):
        return real(method, url, params={**(params or {}), **extra}, **kwargs)

    ingest.httpx.stream = stream
    try:
        yield
    finally:
        ingest.httpx.stream = real


def keyframes_query(enabled: bool):
    """The gpu agent's ExtractParams has no keyframes option: add it to pull_video's query."""
    return frames_query(**({"keyframes": "true"} if enabled else {}))


def run_agent(url: str, pid: int, token: str, path: str, mode: dict, work: Path, segments: int | None = None) -> Run:
    job = work / "job_1"
    job.mkdir()
    extract = ExtractParams(**{k: v for k, v in mode.items() if k != "keyframes"})
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    extra = {"keyframes": "true"} if mode.get("keyframes") else {}
    with frames_query(**extra, **({"segments": segments} if segments else {})):
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


@dataclass
class Report:
    rows: list[dict]
    """agent vs plain: one per (codec, mode)."""
    segment_rows: list[dict]
    """segments: one per (codec, process count), with ``speedup`` against one process."""
    text: str
    """The "Storage extraction" section of bench/RESULTS.md (Markdown, with the command run)."""


QUICK = dict(runs=1, seconds=20, modes=("fps", "keyframes"), segment_seconds=20, min_segment_s=10.0)


def bench(*, runs: int = 3, seconds: int = 60, codecs=("h264", "hevc"), modes=tuple(MODES),
          parts=("agent", "segments"), processes=None, segment_seconds: int = 180, min_segment_s: float = 30.0,
          media: Path | None = None, quick: bool = False, write: bool = False, command: str | None = None) -> Report:
    """Run the benchmark (see the module's docstring); ``quick`` overrides runs, lengths and modes."""
    if quick:
        runs, seconds, modes, segment_seconds = (QUICK["runs"], QUICK["seconds"], QUICK["modes"],
                                                 QUICK["segment_seconds"])
        min_segment_s = QUICK["min_segment_s"]
    cores = os.cpu_count() or 1
    processes = tuple(processes or ((1, cores) if quick else range(1, cores + 1)))
    media = media or Path(tempfile.gettempdir()) / "cosma-bench-media"
    root = media / "root"
    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows, segment_rows, baseline_mib = [], [], None
    with tempfile.TemporaryDirectory(dir=media) as tmp:
        work = Path(tmp)
        if "agent" in parts:
            files = {codec: _served(video_file(media, codec, seconds), root) for codec in codecs}
            rows, baseline_mib = _agent_vs_plain(root, token, files, modes, runs, work)
        if "segments" in parts:
            files = {codec: _served(long_video(media, codec, segment_seconds), root) for codec in codecs}
            segment_rows = _segments(root, token, files, processes, runs, min_segment_s, work)
    load_after = os.getloadavg()
    if command is None:
        command = " ".join(["--quick"] if quick else [f"--runs {runs} --seconds {seconds} --codecs {','.join(codecs)} "
                                                      f"--modes {','.join(modes)} --parts {','.join(parts)} "
                                                      f"--processes {','.join(map(str, processes))} "
                                                      f"--segment-seconds {segment_seconds}"])
    text = report(rows, segment_rows, runs=runs, seconds=seconds, segment_seconds=segment_seconds,
                  min_segment_s=min_segment_s, baseline_mib=baseline_mib, load=(load_before, load_after),
                  total_s=time.perf_counter() - started, command=command + (" --write" if write else ""))
    if write:
        write_section(text)
    return Report(rows, segment_rows, text)


def _served(file: Path, root: Path) -> Path:
    """``file`` hard-linked into the agent's root; the name it has there."""
    if not (root / file.name).exists():
        os.link(file, root / file.name)
    return root / file.name


def _agent_vs_plain(root: Path, token: str, files: dict[str, Path], modes, runs: int, work: Path):
    rows = []
    with storage_agent(root, token, ["--decode-processes", "1"]) as (url, pid):
        baseline_mib = _status_kib(pid, "VmRSS") / 1024
        infos = _infos(url, token)
        for codec, file in files.items():
            info = infos[file.name]
            facts = VideoFacts(duration_s=info.duration_s, fps=info.fps, width=info.width, height=info.height,
                               codec=info.codec)
            for mode in modes:
                plan = plan_extraction(FrameParams(**MODES[mode]), facts)
                agent_runs, plain_runs = [], []
                for i in range(runs):
                    # Alternate who goes first, so a change of load falls on both.
                    pair = [(agent_runs, functools.partial(run_agent, url, pid, token, file.name, MODES[mode], work)),
                            (plain_runs, functools.partial(run_plain, plan, file, work))]
                    for done, step in (pair if i % 2 == 0 else pair[::-1]):
                        done.append(step())
                    print(f"{codec} {mode} run {i + 1}: agent {agent_runs[-1].wall_s:.2f} s "
                          f"({agent_runs[-1].frames} frames), plain {plain_runs[-1].wall_s:.2f} s "
                          f"({plain_runs[-1].frames} frames)", file=sys.stderr, flush=True)
                rows.append(summarise(codec, mode, info.duration_s, agent_runs, plain_runs))
    return rows, baseline_mib


def _infos(url: str, token: str) -> dict[str, VideoInfo]:
    listing = httpx.get(f"{url}/videos", headers={"Authorization": f"Bearer {token}"}, timeout=120).json()
    return {v["path"]: VideoInfo.model_validate(v) for v in listing["videos"]}


def _segments(root: Path, token: str, files: dict[str, Path], processes, runs: int, min_segment_s: float,
              work: Path) -> list[dict]:
    """fps-mode extractions capped at N segment processes, interleaved; speed-up against N = 1."""
    rows = []
    args = ["--decode-processes", str(max(processes)), "--min-segment-s", f"{min_segment_s:g}"]
    with storage_agent(root, token, args) as (url, pid):
        infos = _infos(url, token)
        for codec, file in files.items():
            results: dict[int, list[Run]] = {n: [] for n in processes}
            for i in range(runs):
                for n in (processes if i % 2 == 0 else processes[::-1]):
                    results[n].append(run_agent(url, pid, token, file.name, MODES["fps"], work, segments=n))
                    print(f"{codec} fps {n} process(es) run {i + 1}: {results[n][-1].wall_s:.2f} s, "
                          f"CPU {results[n][-1].cpu_s:.1f} s ({results[n][-1].frames} frames)", file=sys.stderr,
                          flush=True)
            counts = {r.frames for done in results.values() for r in done}
            if len(counts) != 1:
                raise SystemExit(f"segment-parallel extraction of {codec} gave different frame counts: {counts}")
            base = results[processes[0]]
            base_s = statistics.median(r.wall_s for r in base)
            base_cpu = statistics.median(r.cpu_s for r in base)
            for n, done in results.items():
                wall = statistics.median(r.wall_s for r in done)
                cpu = statistics.median(r.cpu_s for r in done)
                rows.append(dict(codec=codec, n=n, frames=done[0].frames, wall_s=wall, cpu_s=cpu, base_s=base_s,
                                 speedup=base_s / wall, cpu_ratio=cpu / base_cpu,
                                 realtime=infos[file.name].duration_s / wall,
                                 spread=f"{min(r.wall_s for r in done):.1f}–{max(r.wall_s for r in done):.1f}"))
    return rows


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--codecs", default="h264,hevc")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--parts", default="agent,segments", help="agent (vs plain ffmpeg), segments (speed-up)")
    parser.add_argument("--processes", default=None, help="segment process counts, e.g. 1,2 (default 1..cores)")
    parser.add_argument("--segment-seconds", type=int, default=180, help="length of the segments part's video")
    parser.add_argument("--min-segment-s", type=float, default=30.0, help="the agent's --min-segment-s there")
    parser.add_argument("--media", type=Path, default=Path(tempfile.gettempdir()) / "cosma-bench-media")
    parser.add_argument("--quick", action="store_true", help="one run, short videos, two modes (a few minutes)")
    parser.add_argument("--write", action="store_true", help="replace the section in bench/RESULTS.md")
    args = parser.parse_args(argv)
    shown = " ".join(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--write")
    result = bench(runs=args.runs, seconds=args.seconds, codecs=tuple(args.codecs.split(",")),
                   modes=tuple(args.modes.split(",")), parts=tuple(args.parts.split(",")),
                   processes=tuple(int(n) for n in args.processes.split(",")) if args.processes else None,
                   segment_seconds=args.segment_seconds, min_segment_s=args.min_segment_s, media=args.media,
                   quick=args.quick, write=args.write, command=shown)
    print(result.text)
    return result


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


def report(rows, segment_rows, *, runs, seconds, segment_seconds, min_segment_s, baseline_mib, load, total_s,
           command) -> str:
    lines = [
        SECTION, "",
        "    .venv/bin/python bench/storage_extraction.py " + command, "",
        f"Machine: {machine()}; load average {load[0][0]:.1f} before, {load[1][0]:.1f} after "
        f"(shared with colleagues' test suites: absolute figures are pessimistic, the ratios are what counts). "
        f"Total bench time {total_s / 60:.1f} min." + (f" The agent's RSS when idle: {baseline_mib:.0f} MiB."
                                                       if baseline_mib else ""),
    ]
    if rows:
        lines += [
            "",
            f"Frames of a generated {seconds} s 1080p30 video through the storage agent (`cosma-qc storage-agent` "
            "subprocess, tar stream on loopback) into a job folder by the gpu agent's `ingest.pull_video` (fsync + "
            "rename per frame), against plain `ffmpeg` with the same input options and filters writing the same "
            f"JPEGs; median of {runs} interleaved runs each (min–max in the last column). Modes: `fps` = 2 fps at "
            "640 px; `max_frames` = 100 frames spread over the video at 640 px (full decode, fps filter); "
            "`keyframes` = key frames only (`-skip_frame nokey`, one per second here) at 640 px. "
            "`CPU ratio`: median CPU seconds on the agent side (its ffmpeg, the agent, the ingesting client) over "
            "plain ffmpeg's; steadier than wall time when the machine is shared. One decode process per extraction "
            "here (`--decode-processes 1`).",
            "",
            "| video | mode | frames | agent s | plain s | ratio | CPU ratio | agent frames/s | plain frames/s | "
            "agent × realtime | plain × realtime | agent peak RSS MiB | agent / plain min–max s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            lines.append(f"| {r['codec']} 1080p {seconds} s | {r['mode']} | {r['frames']} | {r['agent_s']:.2f} | "
                         f"{r['plain_s']:.2f} | {r['ratio']:.2f} | {r['cpu_ratio']:.2f} | {r['agent_fps']:.1f} | "
                         f"{r['plain_fps']:.1f} | {r['agent_rt']:.2f} | {r['plain_rt']:.2f} | {r['peak_mib']:.0f} | "
                         f"{r['spread']} |")
    if segment_rows:
        lines += [
            "",
            f"Segment-parallel decoding: a {segment_seconds} s 1080p30 video (the 60 s one looped, streams copied) "
            "through the agent into a job folder in `fps` mode (2 fps at 640 px), the frames route's `segments=N` "
            f"capping the ffmpeg processes (agent: `--decode-processes` the largest N, `--min-segment-s "
            f"{min_segment_s:g}`); median of {runs} interleaved runs per N (min–max in the last column); every N "
            "gave the same frames. `speed-up` = wall(1) / wall(N); `CPU ratio` = CPU seconds (agent, its ffmpeg "
            "processes, the ingesting client) over N = 1's.",
            "",
            "| video | processes | frames | wall s | speed-up | CPU s | CPU ratio | × realtime | min–max s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in segment_rows:
            lines.append(f"| {r['codec']} 1080p {segment_seconds} s | {r['n']} | {r['frames']} | {r['wall_s']:.2f} | "
                         f"{r['speedup']:.2f} | {r['cpu_s']:.1f} | {r['cpu_ratio']:.2f} | {r['realtime']:.2f} | "
                         f"{r['spread']} |")
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
