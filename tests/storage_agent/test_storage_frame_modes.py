"""Keyframes-only extraction, the queue and progress in /status, unusual names and bad media."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from conftest import TOKEN, wait_until
from shared.jobs import ExtractParams, VideoSource
from shared.videos import FrameParams, StreamEnd
from services.gpu_agent.ingest import pull_video
from services.storage_agent.frames import plan_extraction
from services.storage_agent.probe import VideoFacts
from storage_media import AUTH, ffmpeg_pids, long_video, media, read_tar, running_agent  # noqa: F401

FACTS = VideoFacts(duration_s=3.0, fps=10.0, width=320, height=180, codec="h264")


def test_keyframes_plan_skips_non_key_frames_and_thins_without_repeating():
    plan = plan_extraction(FrameParams(fps=2, keyframes=True, width=160), FACTS)
    argv = plan.argv(Path("/r/a.mp4"))
    assert argv.index("-skip_frame") < argv.index("-i") and argv[argv.index("-skip_frame") + 1] == "nokey"
    assert argv[argv.index("-vf") + 1] == (
        "select=isnan(prev_selected_t)+gte(t-prev_selected_t\\,0.500000),showinfo=checksum=0,scale=160:-2")
    assert argv[argv.index("-fps_mode") + 1] == "passthrough"
    assert plan.expected_frames is None and plan.window_s == 3.0


def _frames(client, path, **params) -> tuple[list[float], StreamEnd, list]:
    response = client.get(f"/videos/{path}/frames", params=params)
    assert response.status_code == 200, response.text
    members = read_tar(response.content)
    times = [float(info.pax_headers["COSMA.t_s"]) for info, _ in members[:-1]]
    return times, StreamEnd.model_validate_json(members[-1][1]), members[:-1]


@pytest.fixture
def root(tmp_path, media):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(media["good"], root / "plongée 01.MP4")  # 3 s at 10 fps, a key frame every second
    return root


def test_keyframes_mode_streams_key_frames_with_their_own_timestamps(root):
    with running_agent(root) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        times, end, members = _frames(client, "plongée 01.MP4", keyframes=True)
        assert end == StreamEnd(ok=True, frames=3) and times == [0.0, 1.0, 2.0]
        assert all(jpeg[:2] == b"\xff\xd8" for _, jpeg in members)
        times, end, _ = _frames(client, "plongée 01.MP4", keyframes=True, max_frames=2)
        assert end.ok and times == [0.0, 2.0]  # spread: one per 1.5 s at most, none repeated
        times, end, _ = _frames(client, "plongée 01.MP4", keyframes=True, start_s=0.5, width=64, quality=20)
        assert end.ok and times == [1.0, 2.0]


def test_a_name_with_spaces_and_accents_reaches_a_gpu_agent_job_folder(root, tmp_path):
    job = tmp_path / "job_1"
    job.mkdir()
    with running_agent(root) as url:
        frames = pull_video(VideoSource(storage_url=url, path="plongée 01.MP4"), ExtractParams(fps=2, width=64),
                            job, video_index=0, first_frame=1, token=TOKEN, timeout_s=30,
                            cancel=threading.Event(), on_frame=lambda *_: None)
        assert [f.t_s for f in frames] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
        thumb = httpx.get(f"{url}/videos/plongée 01.MP4/thumbnail", headers=AUTH, timeout=30)
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    assert sorted(p.name for p in job.iterdir()) == [f"frame_{i:06d}.jpg" for i in range(1, 7)]


HEAVY = {"fps": 30, "width": 1280, "quality": 2}


def test_past_the_limit_requests_queue_with_their_position_then_get_503_with_retry_after(tmp_path, long_video,
                                                                                         media):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(long_video, root / "long.mp4")
    shutil.copy(media["good"], root / "short.mp4")
    settings = {"max_concurrent_extractions": 1, "max_queued_extractions": 1, "extraction_wait_s": 30}
    with running_agent(root, **settings) as url, httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        with client.stream("GET", "/videos/long.mp4/frames", params=HEAVY) as first:
            chunks = first.iter_bytes()  # kept: a dropped iterator closes the response
            assert next(chunks)
            queued: dict = {}
            waiter = threading.Thread(target=lambda: queued.update(
                response=httpx.get(f"{url}/videos/short.mp4/frames", params={"fps": 1}, headers=AUTH, timeout=60)))
            waiter.start()
            wait_until(lambda: client.get("/status").json()["extractions_queued"] == 1, timeout_s=10,
                       what="the second request to queue")
            status = client.get("/status").json()
            running, waiting = status["extractions"]
            assert running["path"] == "long.mp4" and running["state"] == "running" and running["frames"] >= 1
            assert 0 < running["progress"] < 1 and running["expected_frames"] == 900
            assert waiting == {"path": "short.mp4", "state": "queued", "queue_position": 1, "keyframes": False,
                               "frames": 0, "expected_frames": None, "progress": None,
                               "elapsed_s": waiting["elapsed_s"]}
            full = client.get("/videos/short.mp4/frames")
            assert full.status_code == 503 and full.json()["error"]["code"] == "busy"
            assert 2 <= int(full.headers["retry-after"]) <= 120
        waiter.join(timeout=60)
        assert queued["response"].status_code == 200  # it got the freed slot
        assert read_tar(queued["response"].content)[-1][0].name == "end.json"
        status = client.get("/status").json()
        assert status["extractions"] == [] and status["extractions_running"] == 0
    assert not ffmpeg_pids(str(root))


def _bad_media(folder: Path) -> dict[str, str]:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=duration=1",
                    "-c:a", "aac", "-f", "mp4", str(folder / "audio only.MP4")], check=True, timeout=60)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", "color=size=20000x16:rate=2:duration=1", "-c:v", "mjpeg", "-pix_fmt", "yuvj420p",
                    "-f", "mov", str(folder / "wide.MP4")], check=True, timeout=60)
    return {"audio only.MP4": "no video stream", "wide.MP4": "20000x16 is absurd"}


def test_bad_media_is_a_clear_422_and_listed_with_its_reason(root):
    reasons = _bad_media(root)
    with running_agent(root) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        listed = {v["path"]: v["error"] for v in client.get("/videos").json()["videos"]}
        for path, reason in reasons.items():
            assert reason in listed[path]
            for route in ("frames", "thumbnail"):
                response = client.get(f"/videos/{path}/{route}")
                assert response.status_code == 422, (path, route)
                error = response.json()["error"]
                assert error["code"] == "unreadable_video" and path in error["message"] and reason in error["message"]
        assert listed["plongée 01.MP4"] is None
        times, end, _ = _frames(client, "plongée 01.MP4", fps=1)
        assert end.ok and times == [0.0, 1.0, 2.0]
