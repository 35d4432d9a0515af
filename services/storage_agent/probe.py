"""ffprobe: the facts of one video file (duration, frame rate, size, codec), or why it is unreadable."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from shared.errors import BadRequest
from services.storage_agent import fftools

#: ffprobe's JSON for one file is a few hundred bytes; more means something is wrong.
MAX_PROBE_OUTPUT_BYTES = 1 << 20


class ProbeError(Exception):
    """ffprobe could not read the file; ``reason`` is a sentence, without the absolute path.

    ``transient`` errors (a timeout on a busy disk) may go away on their own; others stay
    until the file changes.
    """

    def __init__(self, reason: str, *, transient: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


class VideoUnreadable(BadRequest):
    code = "unreadable_video"


@dataclass(frozen=True)
class VideoFacts:
    duration_s: float | None
    fps: float | None
    width: int | None
    height: int | None
    codec: str | None


def probe_argv(file: Path) -> list[str]:
    return [
        fftools.FFPROBE, "-v", "error", "-hide_banner",
        "-select_streams", "v:0",
        "-show_entries", "stream=codec_name,width,height,avg_frame_rate,r_frame_rate,duration:format=duration",
        "-of", "json",
        *fftools.input_args(file),
    ]


async def probe_video(file: Path, *, timeout_s: float) -> VideoFacts:
    """Run ffprobe on ``file``; :class:`ProbeError` if it cannot be read as a video."""
    try:
        size = file.stat().st_size
    except OSError as exc:
        raise ProbeError(f"cannot open it: {exc.strerror}") from None
    if size == 0:
        raise ProbeError("the file is empty (0 bytes)")
    proc = await fftools.start(probe_argv(file))
    try:
        out = await asyncio.wait_for(_read_all(proc.stdout), timeout_s)
        rc = await asyncio.wait_for(proc.wait(), timeout_s)
    except asyncio.TimeoutError:
        raise ProbeError(f"ffprobe took longer than {timeout_s:g} s on it", transient=True) from None
    finally:
        await fftools.stop(proc)
    if rc != 0:
        raise ProbeError(fftools.reason_from_log(list(proc.stderr_tail), file) or proc.describe_exit(rc))
    return parse_probe_output(out)


async def _read_all(stream: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while chunk := await stream.read(65536):
        out += chunk
        if len(out) > MAX_PROBE_OUTPUT_BYTES:
            raise ProbeError("ffprobe printed far more than expected")
    return bytes(out)


def parse_probe_output(out: bytes) -> VideoFacts:
    try:
        data = json.loads(out or b"{}")
    except ValueError:
        raise ProbeError("ffprobe printed something that is not JSON") from None
    streams = data.get("streams") or []
    if not streams:
        raise ProbeError("it has no video stream")
    stream = streams[0]
    fmt = data.get("format") or {}
    return VideoFacts(
        duration_s=_positive(stream.get("duration")) or _positive(fmt.get("duration")),
        fps=_rate(stream.get("avg_frame_rate")) or _rate(stream.get("r_frame_rate")),
        width=_int(stream.get("width")),
        height=_int(stream.get("height")),
        codec=stream.get("codec_name") or None,
    )


def _positive(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):  # "N/A" or absent
        return None
    return number if number > 0 else None


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _rate(value) -> float | None:
    """``"30000/1001"`` → 29.97; ``"0/0"`` (unknown) → None."""
    try:
        rate = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        return None
    return round(float(rate), 6) if rate > 0 else None
