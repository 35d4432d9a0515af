"""How this agent runs ffprobe and ffmpeg: hardened input options, start and stop.

The input is always opened as ``file:<absolute path>`` with only the ``file`` protocol
allowed and the demuxer forced to ``mov`` (which reads .mp4 and .mov). Without that, a
file named ``x.MP4`` holding an HLS or concat playlist would make ffmpeg open other
files or URLs, and a path starting ``subfile:`` or ``http:`` would be taken as a protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path
from typing import Sequence

import anyio

from shared.errors import ApiError
from shared.procs import Supervised

FFPROBE = "ffprobe"
FFMPEG = "ffmpeg"

#: Seconds between SIGTERM and SIGKILL when stopping ffmpeg/ffprobe; they exit at once.
STOP_GRACE_S = 2.0

# "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55d1c2] " at the start of ffmpeg log lines.
_LOG_CONTEXT = re.compile(r"^\[[^\]]* @ 0x[0-9a-fA-F]+\]\s*")
# Lines that differ only in numbers ("offset 0x8747: partial file") say one thing.
_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\d+")

#: What ffmpeg's terse messages mean for a GoPro file, keyed by a phrase of the message.
HINTS = {
    "moov atom not found": "the MP4 index is missing: the file was cut short (interrupted copy, "
                           "camera lost power) or is not an MP4 at all",
    "partial file": "the file is cut short: its data ends before its index says",
}


class ToolMissing(ApiError):
    status_code = 503
    code = "unavailable"


def input_args(file: Path) -> list[str]:
    """The options that open ``file`` safely; put them where the input goes."""
    return ["-protocol_whitelist", "file", "-f", "mov", "-i", f"file:{file}"]


async def start(argv: Sequence[str], *, process_class: type[Supervised] = Supervised) -> Supervised:
    try:
        return await process_class.start(argv)
    except FileNotFoundError:
        raise ToolMissing(f"{argv[0]} is not installed on this storage node (install Debian's ffmpeg package)") from None


async def stop(proc: Supervised) -> int:
    """Stop the process group even while the calling task is being cancelled.

    stdout is drained meanwhile: asyncio's ``wait()`` (Python < 3.12) returns only once
    the pipes have closed too, and a pipe whose reader stopped reading (a client that went
    away) is paused, never sees EOF, and would hang the stop for ever.
    """
    with anyio.CancelScope(shield=True):
        drain = asyncio.ensure_future(_discard(proc.stdout))
        try:
            return await proc.terminate(grace_s=STOP_GRACE_S)
        finally:
            drain.cancel()


async def _discard(stream: asyncio.StreamReader) -> None:
    with contextlib.suppress(RuntimeError):  # another task is reading it: that drains it too
        while await stream.read(1 << 16):
            pass


def reason_from_log(lines: Sequence[str], file: Path, *, keep: int = 3) -> str:
    """The last few distinct log lines, without context prefixes or the absolute path, with hints."""
    cleaned: dict[str, str] = {}
    for line in lines:
        text = _LOG_CONTEXT.sub("", line.strip()).replace(f"file:{file}: ", "").replace(str(file), file.name)
        if text:
            cleaned.setdefault(_NUMBERS.sub("#", text), text)
    reason = "; ".join(list(cleaned.values())[-keep:])
    hints = [hint for clue, hint in HINTS.items() if clue in reason]
    return reason + "".join(f" ({hint})" for hint in hints)
