"""Faults on real service processes: a storage agent SIGKILLed mid-stream, a gpu agent
SIGKILLed while its backend writes the point cloud, a work root that fills up (tmpfs).

Every service is a real process started through the CLI, on loopback; real ffmpeg, real
pycolmap on the CPU, a small rendered survey. The fault-injecting proxy only holds the
frame stream still for a moment, so the kill lands mid-stream every time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from conftest import processes_matching, require_ffmpeg, wait_until
from PIL import Image
from service_procs import AUTH, Services, agent_job
from tcp_proxy import TcpProxy

from services.demo.synth import render_survey
from shared.cameras import read_cameras
from shared.jobs import ExtractParams, JobSpec, VideoSource
from shared.plyio import read_ply

pytestmark = pytest.mark.slow

SECONDS, FPS = 3.0, 10.0
FRAMES = int(SECONDS * FPS)
#: Small colmap settings: the survey is 640 px wide, 30 frames.
GPU_ARGS = ["--disk-reserve-mib", "0", "--colmap-max-features", "1024", "--storage-timeout-s", "10",
            "--ingest-retries", "5", "--cancel-grace-s", "1"]


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    require_ffmpeg()
    root = tmp_path_factory.mktemp("videos")
    return root, render_survey(root, seconds=SECONDS, fps=FPS)


def put_job(agent_url: str, job_id: int, storage_url: str, path: str) -> None:
    spec = JobSpec(job_id=job_id, videos=[VideoSource(storage_url=storage_url, path=path)],
                   extract=ExtractParams(fps=FPS, width=640))
    resp = httpx.put(f"{agent_url}/jobs/{job_id}", json=spec.model_dump(mode="json"), headers=AUTH, timeout=30)
    assert resp.status_code == 201, resp.text


def wait_agent_final(agent_url: str, job_id: int, timeout_s: float = 300) -> dict:
    return wait_until(lambda: (j := agent_job(agent_url, job_id)) and j["state"] in ("done", "failed", "cancelled")
                      and j, timeout_s=timeout_s, interval_s=0.5, what=f"job {job_id} to end on {agent_url}")


def check_frames(job_dir: Path, expected: int) -> None:
    """Every frame present, numbered 1..expected, each a whole JPEG; no partial file left."""
    names = sorted(p.name for p in job_dir.glob("frame_*.jpg"))
    assert names == [f"frame_{i:06d}.jpg" for i in range(1, expected + 1)]
    for name in names:
        with Image.open(job_dir / name) as image:
            image.load()  # raises on a truncated or corrupt JPEG
            assert image.size[0] == 640
    assert not list(job_dir.glob(".frame_*")), "a partial frame was left behind"


def check_outputs(job_dir: Path, frames: int) -> None:
    """The point cloud parses and the cameras describe the frames that were ingested."""
    cloud = read_ply(job_dir / "reconstruction.ply")
    assert len(cloud["x"]) > 100
    cameras = read_cameras(job_dir / "cameras.json")
    assert [f.name for f in cameras.frames] == [f"frame_{i:06d}.jpg" for i in range(1, frames + 1)]
    assert sum(f.registered for f in cameras.frames) >= 0.8 * frames
    registered = {f.index for f in cameras.frames if f.registered}
    seen_from = {int(i) for i in set(cloud["frame"].tolist())}
    assert seen_from <= registered, f"points seen from frames with no camera: {sorted(seen_from - registered)[:5]}"


def test_storage_agent_killed_mid_stream_then_restarted_the_ingest_resumes(tmp_path, survey):
    root, sample = survey
    with Services(tmp_path) as services:
        storage = services.start("storage-agent", ["--root", root, "--node-id", "st"])
        gpu = services.start("gpu-agent", ["--workdir", tmp_path / "frames", "--node-id", "g1", *GPU_ARGS])
        job_dir = tmp_path / "frames" / "job_31"
        # The gpu agent pulls through a proxy that can hold the stream still: the kill then
        # lands while frames are still to come, every run.
        with TcpProxy(storage.port) as proxy:
            put_job(gpu.url, 31, proxy.url, sample.video.name)
            wait_until(lambda: any(job_dir.glob("frame_*.jpg")), timeout_s=60, interval_s=0.002,
                       what="the first frame to land")
            proxy.cut()
            storage.kill()
            assert not (job_dir / ".video_0.done").exists(), "the stream ended before the kill"
            proxy.restore()  # the gpu agent now sees its stream cut off, then refused connections
            wait_until(lambda: "trying again" in (agent_job(gpu.url, 31) or {}).get("message", ""),
                       timeout_s=30, interval_s=0.05, what="the gpu agent to retry")
            storage.start()  # same port, same root
            job = wait_agent_final(gpu.url, 31)
        assert job["state"] == "done", job
        assert job["frames"] == FRAMES
        check_frames(job_dir, FRAMES)
        check_outputs(job_dir, FRAMES)
        assert "lost the frame stream" in gpu.log() or "ended early" in gpu.log()


def _fifo_reader(path: Path) -> int:
    """A FIFO at ``path`` and a reader on it with a one-page buffer: a writer blocks mid-file."""
    os.mkfifo(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    F_SETPIPE_SZ = 1031
    fcntl.fcntl(fd, F_SETPIPE_SZ, 4096)
    return fd


def test_gpu_agent_killed_while_the_point_cloud_is_written_completes_once_with_whole_outputs(tmp_path, survey):
    """The backend's temporary PLY is a FIFO here, read one page at a time: the agent is
    SIGKILLed while its backend is provably part-way through writing the point cloud."""
    root, sample = survey
    workdir = tmp_path / "frames"
    job_dir = workdir / "job_32"
    fd = None
    with Services(tmp_path) as services:
        storage = services.start("storage-agent", ["--root", root, "--node-id", "st"])
        gpu = services.start("gpu-agent", ["--workdir", workdir, "--node-id", "g1", *GPU_ARGS])
        try:
            put_job(gpu.url, 32, storage.url, sample.video.name)
            state = wait_until(lambda: (s := _state(job_dir)) and s.get("runner_pid") and s,
                               timeout_s=120, interval_s=0.05, what="the backend to start")
            runner = state["runner_pid"]
            fd = _fifo_reader(job_dir / f".reconstruction.ply.{runner}.tmp")
            header = wait_until(lambda: _read_some(fd), timeout_s=240, interval_s=0.05,
                                what="the backend to start writing the point cloud")
            assert header.startswith(b"ply\n")
            # The writer now waits on a full pipe, mid-file.
            gpu.kill()
            assert _alive(runner), "the backend should outlive the killed agent (its own process group)"
            assert not (job_dir / "reconstruction.ply").exists()

            gpu.start()
            wait_until(lambda: not _alive(runner), timeout_s=30, what="the new agent to stop the orphan backend")
            os.close(fd)
            fd = None
            job = wait_agent_final(gpu.url, 32)
        finally:
            if fd is not None:
                os.close(fd)
        assert job["state"] == "done", job
        assert processes_matching(str(job_dir)) == []
        runs = (job_dir / "backend_log.txt").read_text().count(" colmap: ")
        assert runs == 2, f"the backend ran {runs} times, expected the killed run and one rerun"
        check_frames(job_dir, FRAMES)
        check_outputs(job_dir, FRAMES)
        assert not list(job_dir.glob(".reconstruction.ply.*")), "the killed run's partial point cloud was left"
        assert "reconstruction.ply" in job["files"] and not any(f.startswith(".") for f in job["files"])


def _state(job_dir: Path) -> dict | None:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((job_dir / "state.json").read_text())
    return None


def _read_some(fd: int) -> bytes | None:
    try:
        return os.read(fd, 64) or None
    except BlockingIOError:
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> int:
    """Write a file under ``path`` until the file system is full; its size."""
    written = 0
    with open(path, "wb") as fh:
        block = b"\0" * 65536
        try:
            while True:
                written += fh.write(block)
                fh.flush()
        except OSError:
            pass
    return written


def test_a_full_work_root_fails_the_job_with_that_reason_and_nothing_else(tmp_path, survey):
    root, sample = survey
    with tmpfs(tmp_path / "small", "16m") as small, Services(tmp_path) as services:
        storage = services.start("storage-agent", ["--root", root, "--node-id", "st"])
        full = services.start("gpu-agent", ["--workdir", small / "frames", "--node-id", "g-full", *GPU_ARGS])
        other = services.start("gpu-agent", ["--workdir", tmp_path / "frames", "--node-id", "g-ok", *GPU_ARGS])
        job_dir = small / "frames" / "job_41"
        with TcpProxy(storage.port) as proxy:
            put_job(full.url, 41, proxy.url, sample.video.name)  # accepted: 16 MiB are free now
            put_job(other.url, 42, storage.url, sample.video.name)
            wait_until(lambda: any(job_dir.glob("frame_*.jpg")), timeout_s=60, interval_s=0.002,
                       what="the first frame to land")
            proxy.cut()
            filler = fill(small / "filler")  # something else on the node eats the disk
            proxy.restore()
            failed = wait_agent_final(full.url, 41, timeout_s=120)
        assert failed["state"] == "failed", failed
        assert f"the disk under {small / 'frames'} is full" in failed["error"], failed["error"]
        assert "reconstruction.ply" not in failed["files"]
        assert not (job_dir / "reconstruction.ply").exists()
        # The agent keeps serving; its state on disk agrees once there is room again.
        assert httpx.get(f"{full.url}/health", timeout=5).status_code == 200
        assert httpx.get(f"{full.url}/status", headers=AUTH, timeout=5).status_code == 200
        (small / "filler").unlink()
        assert filler > 0
        done = wait_agent_final(other.url, 42)
        assert done["state"] == "done", done
        check_frames(tmp_path / "frames" / "job_42", FRAMES)
        check_outputs(tmp_path / "frames" / "job_42", FRAMES)
        # Restarted with room again, the agent knows the job failed: nothing resumes, nothing is done.
        full.stop()
        full.start()
        again = agent_job(full.url, 41)
        assert again["state"] == "failed" and "is full" in again["error"], again
