"""Splitting ffmpeg's MJPEG stream into frames, whatever the chunking and the header bytes."""

from __future__ import annotations

import subprocess

import pytest

from conftest import require_ffmpeg
from services.storage_agent.jpeg import JpegSplitter, JpegStreamError


@pytest.fixture(scope="module")
def mjpeg_stream() -> bytes:
    """Five real frames as ffmpeg's image2pipe writes them."""
    require_ffmpeg()
    return subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
         "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=5:duration=1",
         "-f", "image2pipe", "-c:v", "mjpeg", "-q:v", "5", "-"],
        check=True, capture_output=True, timeout=30,
    ).stdout


def _split(data: bytes, chunk: int) -> list[bytes]:
    splitter = JpegSplitter()
    frames = []
    for i in range(0, len(data), chunk):
        frames += splitter.feed(data[i:i + chunk])
    assert splitter.pending == 0
    return frames


@pytest.mark.parametrize("chunk", [1, 2, 7, 4096, 1 << 30])
def test_any_chunking_gives_the_same_frames(mjpeg_stream, chunk):
    frames = _split(mjpeg_stream, chunk)
    assert len(frames) == 5
    assert b"".join(frames) == mjpeg_stream
    assert all(f.startswith(b"\xff\xd8") and f.endswith(b"\xff\xd9") for f in frames)


def test_an_end_marker_inside_a_header_segment_does_not_cut_the_frame(mjpeg_stream):
    frame = _split(mjpeg_stream, 1 << 30)[0]
    payload = b"looks like EOI: \xff\xd9 and SOI: \xff\xd8"
    comment = b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload
    tricky = frame[:2] + comment + frame[2:]
    assert _split(tricky + tricky, 3) == [tricky, tricky]


def test_a_partial_frame_is_held_back(mjpeg_stream):
    splitter = JpegSplitter()
    assert splitter.feed(mjpeg_stream[:-1]) and splitter.pending > 0
    assert len(splitter.feed(mjpeg_stream[-1:])) == 1 and splitter.pending == 0


def test_a_stream_that_is_not_jpeg_is_an_error():
    with pytest.raises(JpegStreamError, match="JPEG start"):
        JpegSplitter().feed(b"GIF89a....")


def test_a_frame_without_end_is_bounded(mjpeg_stream):
    splitter = JpegSplitter(max_frame_bytes=1000)
    header_only = mjpeg_stream[:600]
    with pytest.raises(JpegStreamError, match="exceeds"):
        splitter.feed(header_only + b"\x00" * 2000)
