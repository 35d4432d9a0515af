"""Running ffmpeg/ffprobe: hardened input, readable reasons, and stops that cannot hang."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

import pytest

from services.storage_agent import fftools


def test_input_is_a_local_file_read_by_the_mov_demuxer():
    assert fftools.input_args(Path("/srv/v/http:x.mp4")) == [
        "-protocol_whitelist", "file", "-f", "mov", "-i", "file:/srv/v/http:x.mp4",
    ]


def test_reasons_drop_log_prefixes_and_absolute_paths_and_add_hints():
    file = Path("/mnt/ssd/day1/GX010042.MP4")
    lines = [
        "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55d1c2a0] moov atom not found",
        "file:/mnt/ssd/day1/GX010042.MP4: Invalid data found when processing input",
        "",
    ]
    reason = fftools.reason_from_log(lines, file)
    assert reason.startswith("moov atom not found; Invalid data found when processing input (the MP4 index is missing")
    assert "/mnt/ssd" not in reason


def test_reasons_collapse_lines_that_differ_only_in_numbers():
    lines = [f"[mov,mp4 @ 0x5594] stream 0, offset 0x{n:x}: partial file" for n in range(30000, 30100)]
    assert fftools.reason_from_log(lines, Path("/v/a.mp4")) == (
        "stream 0, offset 0x7530: partial file (the file is cut short: its data ends before its index says)")


@pytest.mark.skipif(shutil.which("yes") is None, reason="needs coreutils' yes")
def test_stop_returns_even_when_nobody_reads_stdout_any_more(monkeypatch):
    # Like ffmpeg blocked on a full pipe: SIGTERM does not end it, SIGKILL does, and then
    # asyncio's wait() would wait for a paused pipe's EOF for ever (shared.procs alone hangs here).
    monkeypatch.setattr(fftools, "STOP_GRACE_S", 0.2)

    async def scenario() -> int:
        proc = await fftools.start(["sh", "-c", "trap '' TERM; exec yes a frame that nobody reads"])
        await asyncio.sleep(0.5)  # the reader's buffer fills and asyncio pauses the pipe
        return await asyncio.wait_for(fftools.stop(proc), 10)

    assert asyncio.run(scenario()) == -signal.SIGKILL


def test_a_missing_tool_is_a_503_that_says_what_to_install():
    async def scenario():
        await fftools.start(["ffmpeg-that-is-not-installed", "-version"])

    with pytest.raises(fftools.ToolMissing, match="not installed on this storage node") as info:
        asyncio.run(scenario())
    assert info.value.status_code == 503
