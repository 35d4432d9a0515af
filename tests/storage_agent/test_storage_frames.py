"""Frame extraction: the ffmpeg plan, and real streams of real test videos over HTTP."""

from __future__ import annotations

import asyncio
import json
import subprocess
from fractions import Fraction
from pathlib import Path

import httpx
import pytest

from shared.errors import BadRequest
from shared.videos import FrameParams, StreamEnd
from services.storage_agent import fftools
from services.storage_agent.frames import Extraction, plan_extraction
from services.storage_agent.paths import ResolvedVideo
from services.storage_agent.probe import VideoFacts
from storage_media import AUTH, layout, media, read_tar, running_agent  # noqa: F401  (fixtures)

FACTS = VideoFacts(duration_s=3.0, fps=10.0, width=320, height=180, codec="h264")


def test_plan_samples_at_the_asked_rate():
    plan = plan_extraction(FrameParams(fps=2), FACTS)
    assert plan.rate == 2 and plan.expected_frames == 6 and plan.limit_s is None
    argv = plan.argv(Path("/r/a.mp4"))
    assert argv[:5] == ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
    assert "-ss" not in argv and "-frames:v" not in argv
    assert argv[argv.index("-vf") + 1] == "fps=fps=2/1"
    assert argv[argv.index("-i") + 1] == "file:/r/a.mp4"
    assert argv[-7:] == ["-f", "image2pipe", "-c:v", "mjpeg", "-q:v", "3", "-"]


def test_plan_spreads_max_frames_over_the_window():
    plan = plan_extraction(FrameParams(fps=10, max_frames=5), FACTS)
    assert plan.rate == Fraction(5, 3) and plan.expected_frames == 5
    assert [round(plan.timestamp(k), 6) for k in range(5)] == [0.0, 0.6, 1.2, 1.8, 2.4]
    # A cap the rate never reaches changes nothing.
    assert plan_extraction(FrameParams(fps=1, max_frames=50), FACTS).rate == 1


def test_plan_seeks_before_the_input_and_limits_the_window():
    plan = plan_extraction(FrameParams(fps=2, start_s=1, end_s=2.5, width=250, quality=5), FACTS)
    argv = plan.argv(Path("/r/a.mp4"))
    assert argv.index("-ss") < argv.index("-i") and argv.index("-t") < argv.index("-i")
    assert argv[argv.index("-t") + 1] == "1.500000"
    assert argv[argv.index("-vf") + 1] == "fps=fps=2/1,scale=250:-2"
    assert plan.timestamp(0) == 1.0 and plan.expected_frames == 3
    # An end past the video is the video's end.
    assert plan_extraction(FrameParams(end_s=100), FACTS).limit_s is None


def test_plan_refuses_a_start_past_the_end():
    with pytest.raises(BadRequest, match="past the end"):
        plan_extraction(FrameParams(start_s=3), FACTS)


def _frames(client: httpx.Client, path: str, **params) -> tuple[list, StreamEnd]:
    response = client.get(f"/videos/{path}/frames", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-tar"
    members = read_tar(response.content)
    assert members[-1][0].name == "end.json"
    return members[:-1], StreamEnd.model_validate_json(members[-1][1])


@pytest.fixture
def client(layout):
    with running_agent(layout["root"]) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as c:
        yield c


def test_stream_has_fps_times_duration_frames_with_increasing_timestamps(client):
    frames, end = _frames(client, "day1/boat/GX020042.MP4", fps=2)
    assert end == StreamEnd(ok=True, frames=6)
    assert [info.name for info, _ in frames] == [f"frame_{i:06d}.jpg" for i in range(1, 7)]
    times = [float(info.pax_headers["COSMA.t_s"]) for info, _ in frames]
    assert times == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    for _, jpeg in frames:
        assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"
    frames, end = _frames(client, "GX010042.MP4", fps=10)
    assert end.ok and end.frames == len(frames) == 30


def test_max_frames_are_spread_over_the_duration(client):
    frames, end = _frames(client, "GX010042.MP4", fps=10, max_frames=4)
    assert end.ok and end.frames == 4
    times = [float(info.pax_headers["COSMA.t_s"]) for info, _ in frames]
    assert times == pytest.approx([0.0, 0.75, 1.5, 2.25])


def test_start_and_end_select_a_window(client):
    frames, end = _frames(client, "GX010042.MP4", fps=2, start_s=1, end_s=2.5)
    assert end.ok and end.frames == 3
    assert [float(i.pax_headers["COSMA.t_s"]) for i, _ in frames] == [1.0, 1.5, 2.0]


def test_width_scales_with_an_even_height_and_frames_decode(client, tmp_path):
    frames, end = _frames(client, "GX010042.MP4", fps=1, width=250, quality=10)
    assert end.ok and end.frames == 3
    sample = tmp_path / "frame.jpg"
    sample.write_bytes(frames[-1][1])
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height", "-of", "json", str(sample)],
        check=True, capture_output=True, timeout=30,
    )
    assert json.loads(probe.stdout)["streams"][0] == {"codec_name": "mjpeg", "width": 250, "height": 140}


@pytest.mark.parametrize("params, field", [
    ({"fps": 0}, "fps"), ({"fps": "fast"}, "fps"), ({"fps": 121}, "fps"), ({"width": 8}, "width"),
    ({"max_frames": 0}, "max_frames"), ({"quality": 1}, "quality"), ({"start_s": -1}, "start_s"),
    ({"start_s": 2, "end_s": 1}, "end_s"), ({"bogus": 1}, "bogus"),
])
def test_bad_parameters_are_422_with_a_message(client, params, field):
    response = client.get("/videos/GX010042.MP4/frames", params=params)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid" and field in response.json()["error"]["message"]


def test_a_start_past_the_end_of_the_video_is_422(client):
    response = client.get("/videos/GX010042.MP4/frames", params={"start_s": 5})
    assert response.status_code == 422 and "past the end" in response.json()["error"]["message"]


@pytest.mark.parametrize("path, reason", [
    ("broken/truncated.mp4", "moov atom not found"),
    ("broken/zero.MP4", "empty (0 bytes)"),
    ("broken/text.MP4", "Invalid data"),
])
def test_unreadable_videos_are_422_naming_file_and_reason_and_the_agent_keeps_serving(client, path, reason):
    response = client.get(f"/videos/{path}/frames", params={"fps": 2})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "unreadable_video"
    assert path in error["message"] and reason in error["message"]
    assert client.get("/health").json()["status"] == "ok"
    frames, end = _frames(client, "GX010042.MP4", fps=1)
    assert end.ok and len(frames) == 3


def test_a_file_cut_after_its_index_streams_what_it_has_and_says_it_is_not_ok(client):
    frames, end = _frames(client, "broken/cut.mov", fps=10)
    assert not end.ok and end.frames == len(frames) < 30
    assert "cut.mov" in end.error and "of about 30 frames" in end.error


# An Extraction around a stand-in for ffmpeg (sh), to reach the endings real files rarely give.

def _run_extraction(tmp_path, script: str, *, stall_timeout_s: float = 10) -> tuple[list, StreamEnd, list]:
    jpeg = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=64x36:duration=0.1",
         "-frames:v", "1", "-f", "image2pipe", "-c:v", "mjpeg", "-"],
        check=True, capture_output=True, timeout=30,
    ).stdout
    (tmp_path / "frame.jpg").write_bytes(jpeg)
    video = ResolvedVideo(root=0, path="day1/x.mp4", file=tmp_path / "x.mp4")
    closed = []

    async def scenario() -> bytes:
        proc = await fftools.start(["sh", "-c", script])
        extraction = Extraction(video, plan_extraction(FrameParams(fps=1), FACTS), proc,
                                stall_timeout_s=stall_timeout_s, on_close=closed.append)
        data = b"".join([chunk async for chunk in extraction.tar_chunks()])
        assert proc.proc.returncode is not None  # never left running
        return data

    members = read_tar(asyncio.run(asyncio.wait_for(scenario(), 30)))
    return members[:-1], StreamEnd.model_validate_json(members[-1][1]), closed


def test_a_failing_ffmpeg_ends_the_stream_with_its_reason(tmp_path):
    frames, end, closed = _run_extraction(
        tmp_path, f"cd {tmp_path} && cat frame.jpg frame.jpg; echo 'Error: decoder broke' >&2; exit 1")
    assert len(frames) == 2 and len(closed) == 1
    assert end == StreamEnd(ok=False, frames=2, error="ffmpeg failed on 'day1/x.mp4': Error: decoder broke")


def test_output_ending_inside_a_frame_is_not_ok(tmp_path):
    frames, end, _ = _run_extraction(tmp_path, f"cd {tmp_path} && cat frame.jpg && head -c 100 frame.jpg")
    assert len(frames) == 1 and not end.ok and "ended inside a frame" in end.error


def test_a_stalled_ffmpeg_is_stopped(tmp_path):
    frames, end, closed = _run_extraction(tmp_path, f"cd {tmp_path} && cat frame.jpg && exec sleep 30",
                                          stall_timeout_s=0.3)
    assert len(frames) == 1 and len(closed) == 1
    assert not end.ok and "produced nothing for 0.3 s" in end.error
