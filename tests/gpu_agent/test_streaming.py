"""Streaming into reconstruction and chapters pulled at once (issue 10).

Real pycolmap on a small rendered survey, real ffmpeg, a real storage agent and gpu agent
(processes or uvicorn on loopback). The colmap runner started with ``--follow`` before any
frame exists must give the outputs of a batch run on the same frames.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import (
    TOKEN,
    make_test_video,
    processes_matching,
    require_ffmpeg,
    serve_app,
    wait_until,
)

from services.demo.run import Cluster
from services.demo.synth import render_survey
from services.gpu_agent.app import create_app
from services.gpu_agent.backends import INGEST_DONE_NAME
from services.gpu_agent.config import GpuAgentSettings
from services.gpu_agent.ingest import OrderedFrames
from services.storage_agent.app import create_app as create_storage_app
from services.storage_agent.config import StorageSettings
from shared.cameras import read_cameras
from shared.frames import FRAMES_INDEX_NAME, FrameIndex, IndexedFrame
from shared.geometry import align_rmse, trajectory_length
from shared.jobs import ExtractParams, JobSpec, VideoSource
from shared.plyio import read_ply

REPO = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FPS = 10.0
RUNNER = [sys.executable, "-m", "services.gpu_agent.backends.colmap_runner", "--threads", "2",
          "--max-image-size", "512"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the colmap runner alone: --follow against a batch run ------------------------------


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    """24 frames (480x270) of the rendered survey, as ffmpeg writes them."""
    require_ffmpeg()
    root = tmp_path_factory.mktemp("survey")
    sample = render_survey(root, seconds=2.4, fps=FPS, width=480, height=270)
    out = root / "frames"
    out.mkdir()
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(sample.video), "-q:v", "3", "-start_number", "1",
                    str(out / "frame_%06d.jpg")], check=True)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def batch(frames, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("batch") / "job"
    shutil.copytree(frames, folder)
    proc = subprocess.run([*RUNNER, "--frames", str(folder), "--out", str(folder)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


class Lines:
    """A child's stdout lines, read by a thread, so a test can wait for one without blocking."""

    def __init__(self, stream):
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.queue.put(line)
        self.queue.put(None)

    def next(self, timeout_s: float = 120) -> str | None:
        try:
            return self.queue.get(timeout=timeout_s)
        except queue.Empty:
            pytest.fail(f"no line from the runner within {timeout_s} s")


def _land(source: Path, target: Path, name: str) -> None:
    """Write a frame as the agent does: under a hidden name, then renamed."""
    tmp = target / f".{name}.part"
    shutil.copyfile(source / name, tmp)
    os.replace(tmp, target / name)


@pytest.fixture(scope="module")
def followed(frames, tmp_path_factory) -> dict:
    """A --follow run started on an empty folder; frames land in two halves, then the sentinel.

    ``events`` holds the runner's progress lines in arrival order with ``"SENTINEL"`` at the
    moment the sentinel was written.
    """
    folder = tmp_path_factory.mktemp("follow") / "job"
    folder.mkdir()
    names = sorted(p.name for p in frames.glob("frame_*.jpg"))
    proc = subprocess.Popen([*RUNNER, "--frames", str(folder), "--out", str(folder), "--follow"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    events: list = []
    try:
        lines = Lines(proc.stdout)
        events.append(json.loads(lines.next()))  # started, nothing to do yet
        for name in names[: len(names) // 2]:
            _land(frames, folder, name)
        # The first half is worked on while the second has not landed.
        while not (events[-1]["stage"] == "features" and "so far" in events[-1]["message"]):
            line = lines.next()
            assert line is not None, proc.stderr.read()[-3000:]
            events.append(json.loads(line))
        for name in names[len(names) // 2 :]:
            _land(frames, folder, name)
        (folder / INGEST_DONE_NAME).write_text(json.dumps({"frames": len(names)}))
        events.append("SENTINEL")
        while (line := lines.next(300)) is not None:
            events.append(json.loads(line))
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert rc == 0, proc.stderr.read()[-3000:]
    return {"folder": folder, "events": events, "frames": len(names)}


@pytest.mark.slow
def test_follow_mode_extracts_features_before_the_last_frame_lands(followed):
    events = followed["events"]
    sentinel = events.index("SENTINEL")
    early = [e for e in events[:sentinel] if e["stage"] == "features" and "so far" in e["message"]]
    assert early, events
    counted = int(early[-1]["message"].split()[2])  # "SIFT on N frames so far; ..."
    assert 0 < counted < followed["frames"]
    later = [e["stage"] for e in events[sentinel + 1 :]]
    assert {"matching", "mapping", "writing"} <= set(later)
    assert not any(e["stage"] in ("matching", "mapping") for e in events[:sentinel])  # mapped after the sentinel
    # The pairs among the first half were matched before the sentinel (the runner decided to
    # match them before printing the line the test waited for): fewer are left afterwards.
    first_matching = next(e for e in events[sentinel + 1 :] if e["stage"] == "matching")
    assert "matched earlier)" in first_matching["message"], first_matching


@pytest.mark.slow
def test_follow_mode_gives_the_outputs_of_a_batch_run(followed, batch):
    streamed, batched = read_cameras(followed["folder"] / "cameras.json"), read_cameras(batch / "cameras.json")
    assert [f.name for f in streamed.frames] == [f.name for f in batched.frames]
    assert len(streamed.registered) == len(batched.registered) >= 20
    a = {f.name: f.centre() for f in streamed.registered}
    b = {f.name: f.centre() for f in batched.registered}
    assert set(a) == set(b)
    names = sorted(a)
    est, ref = np.array([a[n] for n in names]), np.array([b[n] for n in names])
    assert align_rmse(est, ref) < 1e-4 * trajectory_length(ref)
    n_streamed = len(read_ply(followed["folder"] / "reconstruction.ply")["x"])
    n_batch = len(read_ply(batch / "reconstruction.ply")["x"])
    assert abs(n_streamed - n_batch) <= 0.02 * n_batch
    assert not list(followed["folder"].glob(".*.tmp"))


def test_follow_mode_refuses_a_frame_count_it_does_not_hold(tmp_path):
    """The sentinel's count and the folder disagree: fail with both numbers, before any SIFT."""
    (tmp_path / INGEST_DONE_NAME).write_text(json.dumps({"frames": 5}))
    (tmp_path / "frame_000001.jpg").write_bytes(b"not a jpeg")
    proc = subprocess.run([*RUNNER, "--frames", str(tmp_path), "--out", str(tmp_path), "--follow"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{INGEST_DONE_NAME} announces 5 frames but {tmp_path} holds 1"), last


def test_follow_mode_stops_when_its_agent_is_gone(tmp_path):
    """An orphaned follower (its agent SIGKILLed) stops by itself instead of waiting forever."""
    # The stand-in agent reads the follower's first line (it is following by then), then exits.
    argv = [*RUNNER, "--frames", str(tmp_path), "--out", str(tmp_path), "--follow"]
    script = (f"import subprocess; p = subprocess.Popen({argv!r}, stdout=subprocess.PIPE, "
              f"stderr=open({str(tmp_path / 'err.txt')!r}, 'w')); p.stdout.readline(); print(p.pid, flush=True)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=True)  # fmt: skip
    pid = int(out.stdout)
    try:
        wait_until(lambda: not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z",
                   timeout_s=120, what="the orphaned follower to stop")  # fmt: skip
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
    assert "the gpu agent that started this runner is gone" in (tmp_path / "err.txt").read_text()


# --- chapters pulled at once -------------------------------------------------------------


def test_ordered_frames_number_in_job_order_whatever_the_arrival_order(tmp_path):
    published = []
    ordered = OrderedFrames(tmp_path, 3, first_video=0, next_number=1, on_publish=lambda f, p: published.append(f))
    staged = {i: tmp_path / f"s{i}" for i in range(3)}

    def land(video: int, local: int) -> None:
        staged[video].mkdir(exist_ok=True)
        path = staged[video] / f"frame_{local:06d}.jpg"
        path.write_bytes(f"{video}-{local}".encode())
        ordered.add(video, IndexedFrame(name=path.name, index=local, video=video, t_s=local / 10), path)

    land(1, 1), land(2, 1), land(0, 1), land(1, 2)
    assert [f.name for f in published] == ["frame_000001.jpg"]  # only video 0's frames go straight through
    assert ordered.complete(2) == [] and ordered.complete(1) == []
    land(0, 2)
    ordered.restart(0)  # a retried pull of video 0 re-sends both frames; one was staged, none lost
    land(0, 1), land(0, 2), land(0, 3)
    assert ordered.complete(0) == [0, 1, 2]
    assert [(f.index, f.video, f.t_s) for f in published] == [
        (1, 0, 0.1), (2, 0, 0.2), (3, 0, 0.3), (4, 1, 0.1), (5, 1, 0.2), (6, 2, 0.1)]
    contents = [(tmp_path / f.name).read_bytes() for f in published]
    assert contents == [b"0-1", b"0-2", b"0-3", b"1-1", b"1-2", b"2-1"]


@pytest.fixture(scope="module")
def chapters(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chapters")
    for name, seconds in (("GX010001.MP4", 1.6), ("GX020001.MP4", 0.6), ("GX030001.MP4", 1.2)):
        make_test_video(root / name, seconds=seconds, fps=10, size="160x90")
    make_test_video(root / "long.MP4", seconds=120, fps=10, size="160x90")  # 1200 frames: an ingest that lasts
    (root / "broken.MP4").write_text("this is not a video\n")
    return root


@pytest.fixture(scope="module")
def storage_url(chapters):
    with serve_app(create_storage_app(StorageSettings(roots=[chapters], token=TOKEN))) as url:
        yield url


def _pulled(tmp_path: Path, storage_url: str, concurrency: int) -> Path:
    """Ingest the three chapters; ``lingbot`` on a node without a GPU fails right after the ingest."""
    settings = GpuAgentSettings(workdir=tmp_path / f"c{concurrency}", token=TOKEN, ingest_concurrency=concurrency,
                                stream_reconstruction=False)  # fmt: skip
    spec = JobSpec(job_id=4, videos=[VideoSource(storage_url=storage_url, path=f"GX0{i}0001.MP4") for i in (1, 2, 3)],
                   extract=ExtractParams(fps=10, width=160), backend="lingbot")  # fmt: skip
    with serve_app(create_app(settings)) as url:
        assert httpx.put(f"{url}/jobs/4", json=spec.model_dump(mode="json"), headers=AUTH).status_code == 201
        job = wait_until(lambda: (j := httpx.get(f"{url}/jobs/4", headers=AUTH).json())["state"] == "failed" and j,
                         timeout_s=120, what="the ingest to end")  # fmt: skip
    assert job["videos_done"] == 3 and job["frames"] == 34, job
    return settings.workdir / "job_4"


def test_chapters_pulled_at_once_are_numbered_as_a_sequential_pull(tmp_path, storage_url):
    sequential, concurrent = _pulled(tmp_path, storage_url, 1), _pulled(tmp_path, storage_url, 3)
    for job_dir in (sequential, concurrent):
        assert sorted(p.name for p in job_dir.glob("frame_*.jpg")) == [f"frame_{i:06d}.jpg" for i in range(1, 35)]
        assert sorted(p.name for p in job_dir.glob(".video_*")) == [f".video_{i}.done" for i in range(3)]
    a = FrameIndex.model_validate_json((sequential / FRAMES_INDEX_NAME).read_text())
    b = FrameIndex.model_validate_json((concurrent / FRAMES_INDEX_NAME).read_text())
    assert a == b
    assert [f.video for f in b.frames] == [0] * 16 + [1] * 6 + [2] * 12
    digest = {d: [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("frame_*.jpg"))]
              for d in (sequential, concurrent)}  # fmt: skip
    assert digest[sequential] == digest[concurrent]


def test_a_failed_ingest_stops_the_streaming_backend(tmp_path, storage_url):
    settings = GpuAgentSettings(workdir=tmp_path / "frames", token=TOKEN, cancel_grace_s=2)
    spec = JobSpec(job_id=5, videos=[VideoSource(storage_url=storage_url, path=p) for p in ("GX010001.MP4", "broken.MP4")],
                   extract=ExtractParams(fps=10, width=160))  # fmt: skip
    with serve_app(create_app(settings)) as url:
        assert httpx.put(f"{url}/jobs/5", json=spec.model_dump(mode="json"), headers=AUTH).status_code == 201
        job = wait_until(lambda: (j := httpx.get(f"{url}/jobs/5", headers=AUTH).json())["state"] == "failed" and j,
                         timeout_s=120, what="the job to fail")  # fmt: skip
        assert job["streaming"] and "broken.MP4" in job["error"], job
        assert job["runner_pid"] is None
        assert processes_matching(str(settings.workdir / "job_5")) == []  # the follower was stopped
        log = (settings.workdir / "job_5" / "backend_log.txt").read_text()
        assert "--follow" in log


# --- a whole job through real agent processes ---------------------------------------------------


@pytest.mark.slow
def test_a_job_streams_through_real_agent_processes(tmp_path):
    require_ffmpeg()
    videos = tmp_path / "videos"
    first = render_survey(videos, name="GX010001.MP4", seconds=1.4, fps=FPS, width=480, height=270)
    second = render_survey(videos, name="GX020001.MP4", seconds=1.2, fps=FPS, width=480, height=270, start_s=1.4)
    cluster = Cluster(tmp_path, "127.0.0.1", TOKEN)
    try:
        storage = cluster.start("storage-agent", ["--root", str(videos), "--node-id", "st"], free_port())
        gpu = cluster.start("gpu-agent", ["--workdir", str(tmp_path / "frames"), "--node-id", "g1",
                                          "--colmap-max-image-size", "512", "--backend-threads", "2"], free_port())  # fmt: skip
        spec = JobSpec(job_id=7, videos=[VideoSource(storage_url=storage, path=v.video.name) for v in (first, second)],
                       extract=ExtractParams(fps=FPS, width=480))  # fmt: skip
        assert httpx.put(f"{gpu}/jobs/7", json=spec.model_dump(mode="json"), headers=AUTH).status_code == 201
        done = wait_until(lambda: (j := httpx.get(f"{gpu}/jobs/7", headers=AUTH).json())["state"]
                          in ("done", "failed", "cancelled") and j, timeout_s=400, interval_s=0.5, what="the job to end")
        assert done["state"] == "done", done
        assert done["streaming"] and done["backend_used"] == "colmap" and done["frames"] == 26
        assert done["ingest_progress"] == 1.0 and done["reconstruct_progress"] == 1.0
        job_dir = tmp_path / "frames" / "job_7"
        assert sorted(p.name for p in job_dir.glob("frame_*.jpg")) == [f"frame_{i:06d}.jpg" for i in range(1, 27)]
        assert json.loads((job_dir / INGEST_DONE_NAME).read_text()) == {"frames": 26}
        assert "--follow" in (job_dir / "backend_log.txt").read_text()
        assert processes_matching(str(job_dir)) == []
        cameras = read_cameras(job_dir / "cameras.json")
        registered = cameras.registered
        assert len(registered) >= 22
        truth = {}
        for video, sample in enumerate((first, second)):
            for frame in json.loads(sample.poses.read_text())["frames"]:
                truth[(video, round(frame["t_s"], 3))] = np.array(frame["c2w"])[:3, 3]
        est = np.array([f.centre() for f in registered])
        ref = np.array([truth[(f.source.video, round(f.source.t_s, 3))] for f in registered])
        assert align_rmse(est, ref) < 0.02 * trajectory_length(ref)
    finally:
        cluster.stop()


@pytest.fixture
def streaming_long_job(tmp_path, storage_url):
    """A gpu agent streaming a 1200-frame ingest; yields (url, job folder, job) once its backend follows."""
    settings = GpuAgentSettings(workdir=tmp_path / "frames", token=TOKEN, cancel_grace_s=2)
    spec = JobSpec(job_id=6, videos=[VideoSource(storage_url=storage_url, path="long.MP4")],
                   extract=ExtractParams(fps=10, width=160))  # fmt: skip
    with serve_app(create_app(settings)) as url:
        assert httpx.put(f"{url}/jobs/6", json=spec.model_dump(mode="json"), headers=AUTH).status_code == 201
        job = wait_until(lambda: (j := httpx.get(f"{url}/jobs/6", headers=AUTH).json())["state"] == "extracting"
                         and j["runner_pid"] and j["frames"] > 0 and j, timeout_s=60, interval_s=0.02,
                         what="the backend to follow the ingest")  # fmt: skip
        yield url, settings.workdir / "job_6", job
        if processes_matching(str(settings.workdir / "job_6")):  # only when the test failed
            httpx.delete(f"{url}/jobs/6", headers=AUTH)


def _final(url: str) -> dict:
    return wait_until(lambda: (j := httpx.get(f"{url}/jobs/6", headers=AUTH).json())["state"]
                      in ("done", "failed", "cancelled") and j, timeout_s=180, what="the job to end")


def test_a_backend_dying_mid_ingest_fails_the_job_with_its_reason_once_the_frames_are_in(streaming_long_job):
    url, job_dir, job = streaming_long_job
    os.kill(job["runner_pid"], signal.SIGKILL)
    final = _final(url)
    assert final["state"] == "failed" and final["streaming"], final
    assert final["error"].startswith("reconstruction failed while frames were landing:"), final["error"]
    assert "SIGKILL" in final["error"] or "signal 9" in final["error"], final["error"]
    assert final["frames"] == 1200 and final["videos_done"] == 1  # pulled in full: QC report, retry
    assert (job_dir / "qc.json").exists()
    assert processes_matching(str(job_dir)) == []


def test_cancel_mid_stream_stops_the_backend_and_the_ingest(streaming_long_job):
    url, job_dir, _ = streaming_long_job
    assert httpx.delete(f"{url}/jobs/6", headers=AUTH).status_code == 200
    final = _final(url)
    assert final["state"] == "cancelled" and final["runner_pid"] is None, final
    assert processes_matching(str(job_dir)) == []
    assert len(list(job_dir.glob("frame_*.jpg"))) < 1200


def test_a_job_finding_the_reconstruction_slot_taken_pulls_its_frames_meanwhile(streaming_long_job, storage_url):
    """One CPU slot, held by the streaming job: the next job does not wait for it before pulling
    (it would hold an ingest slot idle); it pulls every frame, then waits, as a batch."""
    url, _, _ = streaming_long_job
    spec = JobSpec(job_id=8, videos=[VideoSource(storage_url=storage_url, path="GX010001.MP4")],
                   extract=ExtractParams(fps=10, width=160))  # fmt: skip
    assert httpx.put(f"{url}/jobs/8", json=spec.model_dump(mode="json"), headers=AUTH).status_code == 201
    job = wait_until(lambda: "waiting for a free CPU slot" in (j := httpx.get(f"{url}/jobs/8", headers=AUTH).json())[
        "message"] and j, timeout_s=60, what="the second job to wait for the CPU slot")  # fmt: skip
    assert not job["streaming"] and job["frames"] == 16 and job["videos_done"] == 1 and job["runner_pid"] is None
    first = httpx.get(f"{url}/jobs/6", headers=AUTH).json()
    assert first["streaming"] and first["state"] == "extracting" and first["runner_pid"]  # still holds the slot
    assert httpx.delete(f"{url}/jobs/8", headers=AUTH).status_code == 200
