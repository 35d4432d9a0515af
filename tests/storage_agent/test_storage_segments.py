"""Segment-parallel extraction: the same frames as a single pass, bounded processes, clean stops.

Real ffmpeg on generated videos (H.264 with B-frames and HEVC with open GOPs, a key frame
every second), a real agent on loopback; a stream with ``segments=1`` is the single pass
every segmented stream is compared with: names, timestamps and JPEG bytes.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from conftest import TOKEN, processes_matching, require_ffmpeg, serve_app, wait_until
from shared.videos import FrameParams, StreamEnd
from services.storage_agent.app import create_app
from services.storage_agent.config import StorageSettings
from services.storage_agent.frames import plan_extraction
from services.storage_agent.probe import VideoFacts
from services.storage_agent.segments import Seams, Segment, split_window
from storage_media import AUTH, ffmpeg_pids, media, read_tar  # noqa: F401  (fixture)

SECONDS = 20
#: Heavy output (1280 px, best quality): a stream not read stalls its segments on full buffers.
HEAVY = {"fps": 30, "width": 1280, "quality": 2}


def _encode(argv: list[str], path: Path) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *argv, str(path)],
                   check=True, timeout=120)
    return path


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> dict[str, Path]:
    """20 s at 30 fps, a key frame every second: H.264 with B-frames, and HEVC (open GOP) of it."""
    require_ffmpeg()
    folder = tmp_path_factory.mktemp("segments")
    h264 = _encode(["-f", "lavfi", "-i", f"testsrc2=size=320x180:rate=30:duration={SECONDS}",
                    "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", "30", "-pix_fmt", "yuv420p"],
                   folder / "h264.mp4")
    encoders = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    made = {"h264": h264}
    if "libx265" in encoders:
        made["hevc"] = _encode(["-i", str(h264), "-c:v", "libx265", "-preset", "ultrafast",
                                "-x265-params", "keyint=30:log-level=error", "-tag:v", "hvc1"], folder / "hevc.mp4")
    return made


@pytest.fixture
def root(tmp_path, videos) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    for name, path in videos.items():
        shutil.copy(path, root / f"{name}.mp4")
    return root


@contextlib.contextmanager
def agent(root: Path, **settings) -> Iterator[tuple[str, object]]:
    """A storage agent on loopback; yields its URL and its Extractor (to read its process counts)."""
    app = create_app(StorageSettings(roots=[root], token=TOKEN, node_id="storage-test", **settings))
    with serve_app(app) as url:
        yield url, app.state.agent.extractor
    assert not ffmpeg_pids(str(root)), "an ffmpeg outlived the agent"


def _stream(client: httpx.Client, path: str, **params) -> tuple[list[tuple[str, str, bytes]], StreamEnd]:
    response = client.get(f"/videos/{path}/frames", params=params)
    assert response.status_code == 200, response.text
    members = read_tar(response.content)
    assert members[-1][0].name == "end.json"
    frames = [(info.name, info.pax_headers["COSMA.t_s"], data) for info, data in members[:-1]]
    return frames, StreamEnd.model_validate_json(members[-1][1])


def _assert_same(single, segmented) -> None:
    assert [(n, t) for n, t, _ in segmented] == [(n, t) for n, t, _ in single]  # count, order, timestamps
    differing = [n for (n, _, a), (_, _, b) in zip(single, segmented) if a != b]
    assert not differing, f"JPEGs differ from the single pass's: {differing[:5]}"


# The seam arithmetic, without ffmpeg.

TB = Fraction(1, 15360)  # libx264 in MP4 at 30 fps


def _seams(*key_s: float, first_pts: int = 0) -> Seams:
    return Seams(time_base=TB, start_us=0, first_pts=first_pts, keyframes=tuple(int(k / TB) for k in key_s))


def test_seams_fall_on_the_single_pass_slots_of_their_key_frames():
    segments = split_window(0.0, Fraction(2), None, _seams(4.5, 9.0, 15.0))
    assert [(s.first, s.frames) for s in segments] == [(0, 9), (9, 9), (18, 12), (30, None)]
    assert segments[0] == Segment(index=0, first=0, frames=9)  # the single pass's own options
    assert segments[1].seek_us == 4_500_000 and segments[1].offset_us == 4_500_000
    assert segments[1].start_pts == int(4.5 / TB)
    # A window starting at 2.37 s: timestamps shift by -2.37 s in both, slots round half up.
    segments = split_window(2.37, Fraction(3), None, _seams(6.0, 12.0, first_pts=int(2.4 / TB)))
    assert [s.first for s in segments] == [0, 11, 29]  # round(3.63 x 3) = 11, round(9.63 x 3) = 29
    assert segments[1].offset_us == 6_000_000 - 2_370_000


def test_seams_skip_key_frames_before_the_window_beyond_max_frames_or_without_a_slot_of_their_own():
    assert [s.first for s in split_window(5.0, Fraction(2), None, _seams(3.0, 10.0, first_pts=int(5 / TB)))] == [0, 10]
    assert [s.first for s in split_window(0.0, Fraction(2), 12, _seams(3.0, 6.0, 9.0))] == [0, 6]
    assert split_window(0.0, Fraction(2), 12, _seams(3.0, 6.0, 9.0))[-1].frames is None  # the cap applies
    assert [s.first for s in split_window(0.0, Fraction(1, 10), None, _seams(3.0, 6.0, 9.0))] == [0, 1]
    # A window ending before the file: the last segment stops where -t does, counted from the
    # single pass's first frame (here 0.5 s), not from its own.
    segments = split_window(0.5, Fraction(2), None, _seams(6.0, first_pts=int(0.5 / TB)), limit_s=10.0)
    assert [s.end_pts for s in segments] == [None, int(10.0 / TB)]
    # The single pass's first frame half a slot late: its numbering is not the slot's; one pass.
    assert split_window(0.0, Fraction(30), None, _seams(3.0, first_pts=int(0.02 / TB))) == []


def test_a_segment_command_seeks_shifts_trims_and_stops_after_its_frames():
    plan = plan_extraction(FrameParams(fps=2, width=160), VideoFacts(SECONDS, 30.0, 320, 180, "h264"))
    segment = split_window(0.0, plan.rate, None, _seams(4.5, 9.0))[1]
    argv = plan.argv(Path("/r/a.mp4"), segment=segment, threads=1)
    i = argv.index("-i")
    assert argv[argv.index("-ss") + 1] == "4.500000" and argv[argv.index("-itsoffset") + 1] == "4.500000"
    assert argv.index("-ss") < i and argv.index("-threads") < i and argv[argv.index("-threads") + 1] == "1"
    assert argv[argv.index("-vf") + 1] == f"trim=start_pts={int(4.5 / TB)},fps=fps=2/1,scale=160:-2"
    assert argv[argv.index("-frames:v") + 1] == "9" and argv[argv.index("-fps_mode") + 1] == "passthrough"
    windowed = plan_extraction(FrameParams(fps=2, end_s=12), VideoFacts(SECONDS, 30.0, 320, 180, "h264"))
    last = split_window(0.0, windowed.rate, None, _seams(4.5, 9.0), limit_s=windowed.limit_s)[-1]
    argv = windowed.argv(Path("/r/a.mp4"), segment=last)
    assert "-t" not in argv and argv[argv.index("-vf") + 1] == (
        f"trim=start_pts={int(9 / TB)}:end_pts={int(12 / TB)},fps=fps=2/1")
    assert "-frames:v" not in argv and "-threads" not in argv


# Real streams.

@pytest.mark.parametrize("codec, params, settings", [
    ("h264", {"fps": 2}, {"min_segment_s": 5}),  # 4 segments, seams at 5, 10, 15 s: on key frames
    ("h264", {"fps": 30, "width": 160}, {"min_segment_s": 3}),  # 6, seams at 3.3, 6.7 s...: between them
    ("h264", {"fps": 7.3, "start_s": 2.37}, {"min_segment_s": 2}),  # a rate off the source's, a late start
    ("h264", {"fps": 10, "max_frames": 77}, {"min_segment_s": 2}),  # spread over the video, capped
    ("h264", {"fps": 29.97, "start_s": 0.5, "end_s": 12.345}, {"min_segment_s": 2}),  # a window inside
    ("hevc", {"fps": 3, "width": 160}, {"min_segment_s": 3}),
])
def test_segmented_streams_hold_exactly_the_single_pass_frames(root, codec, params, settings):
    if not (root / f"{codec}.mp4").exists():
        pytest.skip(f"ffmpeg here has no {codec} encoder to make the test video")
    with agent(root, decode_processes=3, **settings) as (url, extractor), \
            httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        single, single_end = _stream(client, f"{codec}.mp4", segments=1, **params)
        assert extractor.segmented_total == 0 and single_end.ok
        segmented, end = _stream(client, f"{codec}.mp4", segments=3, **params)
        assert extractor.segmented_total == 1 and extractor.processes.peak >= 2
    assert end == single_end
    _assert_same(single, segmented)
    expected = plan_extraction(FrameParams(**params), VideoFacts(SECONDS, 30.0, 320, 180, codec)).expected_frames
    assert abs(len(single) - expected) <= 1


def test_a_segment_count_beyond_sense_is_bounded_by_the_node_and_the_video(root):
    with agent(root, decode_processes=2, min_segment_s=8) as (url, extractor), \
            httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        single, _ = _stream(client, "h264.mp4", fps=5, segments=1)
        segmented, end = _stream(client, "h264.mp4", fps=5, segments=64)
        assert end.ok and extractor.segmented_total == 1 and extractor.processes.peak == 2
        for bad in (0, 65, "many"):
            response = client.get("/videos/h264.mp4/frames", params={"segments": bad})
            assert response.status_code == 422 and "segments" in response.json()["error"]["message"]
    _assert_same(single, segmented)


def test_keyframes_mode_and_short_videos_stay_single_pass_and_correct(root, media):
    shutil.copy(media["good"], root / "short.mp4")  # 3 s: shorter than two segments
    with agent(root, decode_processes=4, min_segment_s=2) as (url, extractor), \
            httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        keys, end = _stream(client, "h264.mp4", keyframes=True, segments=4)
        assert end.ok and [t for _, t, _ in keys] == [f"{s:.6f}" for s in range(SECONDS)]
        short, end = _stream(client, "short.mp4", fps=2, segments=4)
        assert end.ok and len(short) == 6
        assert extractor.segmented_total == 0 and extractor.processes.peak == 1


def _hold_stream(client: httpx.Client, path: str, params: dict, opened: threading.Event, release: threading.Event):
    """Open a frames stream, read one chunk, then hold it unread until ``release``."""
    with client.stream("GET", f"/videos/{path}/frames", params=params) as response:
        assert response.status_code == 200
        chunks = response.iter_bytes()  # kept: a dropped iterator closes the response
        assert next(chunks)
        opened.set()
        release.wait(60)


def test_a_client_going_away_stops_every_segment_process(root):
    settings = {"decode_processes": 3, "min_segment_s": 4, "segment_buffer_mib": 1}
    with agent(root, **settings) as (url, extractor), httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        with client.stream("GET", "/videos/h264.mp4/frames", params={**HEAVY, "segments": 3}) as response:
            chunks = response.iter_bytes()
            assert next(chunks)
            # All three segments run: the first waits on us, the two ahead on their full buffers.
            wait_until(lambda: len(ffmpeg_pids(str(root))) == 3, timeout_s=30, what="three segment processes")
        wait_until(lambda: not processes_matching(str(root)), timeout_s=30, what="every ffmpeg to be stopped")
        wait_until(lambda: extractor.processes.in_use == 0 and not extractor.running, timeout_s=10,
                   what="the tokens to come back")
        frames, end = _stream(client, "h264.mp4", fps=1, segments=3)  # the node still serves
        assert end.ok and len(frames) == SECONDS


def test_processes_of_all_extractions_stay_within_decode_processes(root):
    settings = {"decode_processes": 3, "max_concurrent_extractions": 2, "min_segment_s": 4,
                "segment_buffer_mib": 1, "extraction_wait_s": 300}  # the second request must outwait the first
    with agent(root, **settings) as (url, extractor), httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        opened, release = threading.Event(), threading.Event()
        first = threading.Thread(target=_hold_stream, args=(client, "h264.mp4", {**HEAVY, "segments": 3}, opened,
                                                            release))
        first.start()
        try:
            assert opened.wait(30)
            wait_until(lambda: len(ffmpeg_pids(str(root))) == 3, timeout_s=30, what="the first stream's 3 processes")
            # A second extraction is admitted to a slot but waits for a process token.
            second: dict = {}
            waiter = threading.Thread(target=lambda: second.update(
                result=_stream(httpx.Client(base_url=url, headers=AUTH, timeout=300), "hevc.mp4" if (
                    root / "hevc.mp4").exists() else "h264.mp4", fps=2, segments=3)))
            waiter.start()
            wait_until(lambda: client.get("/status").json()["extractions_queued"] == 1, timeout_s=60,
                       what="the second request to wait")
            counts = [len(ffmpeg_pids(str(root))) for _ in range(5)]
            assert max(counts) == 3 and extractor.processes.in_use == 3
            metrics = httpx.get(f"{url}/metrics", timeout=30).text
            assert "cosma_storage_decode_processes 3.0" in metrics
            assert "cosma_storage_decode_processes_max 3.0" in metrics
        finally:
            release.set()
            first.join(30)
        waiter.join(120)
        assert "result" in second, "the second request did not finish"
        frames, end = second["result"]
        assert end.ok and len(frames) == 2 * SECONDS
        assert extractor.processes.peak == 3 and extractor.segmented_total == 2
