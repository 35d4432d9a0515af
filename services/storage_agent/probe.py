"""ffprobe: the facts of one video file (duration, frame rate, size, codec, rotation, bit rate,
creation time), or why it is unreadable (no video stream, absurd picture size, ffprobe's reason)."""

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
#: Largest picture side taken for real; 8K is 7680, GoPro's largest 5.3K is 5312 wide.
MAX_SIDE_PX = 16384
#: Smallest: below this nothing useful can be seen, and it is usually a corrupt header.
MIN_SIDE_PX = 16


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
    variable_fps: bool | None = None
    rotation_deg: int | None = None
    bit_rate_bps: int | None = None
    creation_time: str | None = None


def probe_argv(file: Path) -> list[str]:
    return [
        fftools.FFPROBE, "-v", "error", "-hide_banner",
        "-select_streams", "v:0",
        "-show_entries",
        "stream=codec_name,width,height,avg_frame_rate,r_frame_rate,duration,bit_rate"
        ":stream_tags=rotate,creation_time:stream_side_data=rotation"
        ":format=duration,bit_rate:format_tags=creation_time",
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
    width, height = _int(stream.get("width")), _int(stream.get("height"))
    if not width or not height:
        raise ProbeError("its video stream has no picture size (a corrupt header?)")
    if not (MIN_SIDE_PX <= width <= MAX_SIDE_PX and MIN_SIDE_PX <= height <= MAX_SIDE_PX):
        raise ProbeError(f"its picture size {width}x{height} is absurd "
                         f"(each side must be {MIN_SIDE_PX} to {MAX_SIDE_PX} pixels): a corrupt header?")
    avg, base = _rate(stream.get("avg_frame_rate")), _rate(stream.get("r_frame_rate"))
    tags, fmt_tags = stream.get("tags") or {}, fmt.get("tags") or {}
    return VideoFacts(
        duration_s=_positive(stream.get("duration")) or _positive(fmt.get("duration")),
        fps=avg or base,
        width=width,
        height=height,
        codec=stream.get("codec_name") or None,
        # r_frame_rate is the base rate that represents every timestamp; a constant-rate
        # file averages exactly that, a variable one (phones, screen captures) does not.
        variable_fps=None if avg is None or base is None else abs(avg - base) > 0.01 * base,
        rotation_deg=_rotation(stream),
        bit_rate_bps=_int(stream.get("bit_rate")) or _int(fmt.get("bit_rate")),
        creation_time=tags.get("creation_time") or fmt_tags.get("creation_time") or None,
    )


def _rotation(stream: dict) -> int | None:
    """Display rotation as ffprobe reports it (side data, else the old ``rotate`` tag), in 0..359."""
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            value = _float(side["rotation"])
            return None if value is None else round(value) % 360
    value = _float((stream.get("tags") or {}).get("rotate"))
    return 0 if value is None else round(value) % 360


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


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
