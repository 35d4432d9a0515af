"""Segment-parallel decoding: one long video's extraction split into time segments, each
decoded by its own ffmpeg, streamed out as the one ordered tar stream a single pass gives.

Why this is exact. The ``fps`` filter turns each source frame's time into an output slot,
``round((t - start) · rate)`` (rounded half away from zero, in integers), and fills slot
``n`` with the latest frame whose slot is ``<= n``. A seam is put at a key frame ``K``:

* the segment before it stops after exactly ``slot(K) - first_slot`` frames (``-frames:v``);
* the segment from it seeks to ``K`` (``-ss``: ffmpeg lands on ``K`` or an earlier key frame),
  shifts timestamps exactly as the single pass does (``-itsoffset`` so that the input offset
  is the same ``-(start + container start)``, in microseconds as ffmpeg computes it), and drops
  every frame before ``K`` (``trim=start_pts``, in the stream's own ticks); ``K`` is then the
  first frame the ``fps`` filter sees, so its first output is slot ``slot(K)``, filled with
  the same frame as in the single pass (every frame from ``K`` on is there and decodable).

``slot(K)`` is computed here from ffprobe's packet timestamps (``-read_intervals``: one seek
per seam, no decoding) with the same integer rounding as ffmpeg. The last segment ends where
the single pass does: at the end of the file, or for a window ending before it where the
single pass's ``-t`` stops (its trim counts from the first frame that pass decodes, so the
segment gets ``trim=end_pts`` at that frame's timestamp plus the duration instead); the
``fps`` filter's end-of-file rounding is then the same too.

Not split: keyframes mode (a key frame is kept if it is far enough from the previous one
*kept*, so each seam would depend on the segment before it; it is 10-20x realtime anyway),
unknown durations, windows shorter than two ``min_segment_s``, a window whose first frame is
half a slot or more after its start (ffmpeg pads the output there), key frames ffprobe
cannot seek to.

Processes: an extraction always runs one ffmpeg (the slot it was admitted with); it starts
further segments only while the node-wide count of decode processes is under
``decode_processes``. Segments decoded ahead of the one being streamed keep their JPEGs in
memory up to a byte budget each, then their ffmpeg waits on its pipe (back-pressure): memory
stays bounded whatever the length and the client's speed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import AsyncIterator, Callable

import anyio

from shared.procs import Supervised
from shared.videos import StreamEnd
from services.storage_agent import fftools
from services.storage_agent.jpeg import JpegSplitter, JpegStreamError
from services.storage_agent.paths import ResolvedVideo
from services.storage_agent.tarstream import end_members, frame_member

log = logging.getLogger(__name__)

_US = 1_000_000
#: Bytes read from ffmpeg's stdout at a time.
READ_CHUNK_BYTES = 256 * 1024
#: Packets read after the window's start to find the first frame of a single pass; B-frame
#: reordering moves frames by a few positions at most.
_HEAD_PACKETS = 48


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, else the machine's count)."""
    with contextlib.suppress(AttributeError, OSError):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def near_inf(value: Fraction) -> int:
    """``value`` rounded to the nearest integer, halves away from zero (``AV_ROUND_NEAR_INF``)."""
    rounded = math.floor(abs(value) + Fraction(1, 2))
    return rounded if value >= 0 else -rounded


def microseconds(seconds_text: str) -> int:
    """``"12.345678"`` → 12345678: what ffmpeg's ``av_parse_time`` makes of a duration we print."""
    sign = -1 if seconds_text.startswith("-") else 1
    whole, _, frac = seconds_text.lstrip("-").partition(".")
    return sign * (int(whole or 0) * _US + int((frac + "000000")[:6]))


def seconds_text(us: int) -> str:
    """Microseconds as the exact decimal seconds ffmpeg parses back to the same value."""
    sign = "-" if us < 0 else ""
    us = abs(us)
    return f"{sign}{us // _US}.{us % _US:06d}"


@dataclass(frozen=True)
class Seams:
    """What ffprobe says about the places a video can be cut, in the video stream's own ticks."""

    time_base: Fraction
    start_us: int
    """The container's start time (ffmpeg adds it to every seek and subtracts it from timestamps)."""
    first_pts: int | None
    """Timestamp of the first frame a single pass decodes from the window's start."""
    keyframes: tuple[int, ...]
    """Key frames at or before each seam target, sorted, without repeats."""


@dataclass(frozen=True)
class Segment:
    index: int
    first: int
    """Output index (from 0) of its first frame in the whole stream."""
    frames: int | None
    """Exactly how many frames it must give; None for the last (to the end, or ``max_frames``)."""
    seek_us: int | None = None
    """``-ss`` in microseconds; None for the first segment (the single pass's own options)."""
    offset_us: int = 0
    """``-itsoffset`` making the input's timestamp offset the single pass's."""
    start_pts: int | None = None
    """``trim=start_pts``: the seam's key frame, in the stream's ticks after that offset."""
    end_pts: int | None = None
    """``trim=end_pts`` of the last segment of a window ending before the file does: where the
    single pass's ``-t`` stops (it counts from the first frame that single pass decodes)."""


def input_offset_ticks(start_s: float, container_start_us: int, time_base: Fraction) -> int:
    """What ffmpeg adds to each packet's timestamp for ``-ss start_s`` (its ``ts_offset``, rounded
    to the stream's ticks as ``av_rescale_q`` does): the window then starts at 0."""
    return near_inf(Fraction(-(microseconds(f"{start_s:.6f}") + container_start_us), _US) / time_base)


def split_window(start_s: float, rate: Fraction, max_frames: int | None, seams: Seams,
                 limit_s: float | None = None) -> list[Segment]:
    """Segments whose frames, one after the other, are exactly those of the single pass."""
    start_us = microseconds(f"{start_s:.6f}")  # what the single pass's -ss means to ffmpeg
    tb = seams.time_base
    offset_ticks = input_offset_ticks(start_s, seams.start_us, tb)

    def slot(pts: int) -> int:
        return near_inf((pts + offset_ticks) * tb * rate)

    if seams.first_pts is None or slot(seams.first_pts) != 0:
        return []  # the single pass's first frame is not at the window's start: leave it to one pass
    segments = [Segment(index=0, first=0, frames=None)]
    for key in seams.keyframes:
        first = slot(key)
        if key + offset_ticks <= 0 or first <= segments[-1].first:
            continue  # before the window, or no slot of its own
        if max_frames is not None and first >= max_frames:
            break
        seek_us = math.ceil(key * tb * _US) - seams.start_us  # at or just past K: ffmpeg lands on K
        segments.append(Segment(index=len(segments), first=first, frames=None, seek_us=seek_us,
                                offset_us=seek_us - start_us, start_pts=key + offset_ticks))
    end_pts = None
    if limit_s is not None:  # -t's trim: frames less than its duration after the first one decoded
        end_pts = seams.first_pts + offset_ticks + near_inf(Fraction(microseconds(f"{limit_s:.6f}"), _US) / tb)
    return [
        Segment(index=s.index, first=s.first, frames=(nxt.first - s.first) if nxt else None,
                seek_us=s.seek_us, offset_us=s.offset_us, start_pts=s.start_pts,
                end_pts=end_pts if nxt is None and s.index > 0 else None)
        for s, nxt in zip(segments, [*segments[1:], None])
    ]


def seam_targets(start_s: float, window_s: float, count: int) -> list[float]:
    """Evenly spaced cut times inside the window, for ``count`` segments."""
    return [start_s + window_s * i / count for i in range(1, count)]


def probe_argv(file: Path, intervals: str) -> list[str]:
    return [
        fftools.FFPROBE, "-v", "error", "-hide_banner", "-select_streams", "v:0",
        "-read_intervals", intervals,
        "-show_entries", "packet=pts,flags:stream=time_base:format=start_time", "-of", "json",
        *fftools.input_args(file),
    ]


async def probe_seams(file: Path, start_s: float, targets: list[float], *, timeout_s: float) -> Seams | None:
    """Key frames at or before each target, and the single pass's first frame; None if unclear."""
    head = await _ffprobe(probe_argv(file, f"{start_s:.6f}%+#{_HEAD_PACKETS}"), timeout_s)
    cuts = await _ffprobe(probe_argv(file, ",".join(f"{t:.6f}%+#1" for t in targets)), timeout_s)
    if head is None or cuts is None:
        return None
    try:
        tb = Fraction(head["streams"][0]["time_base"])
        start_us = microseconds(str((head.get("format") or {}).get("start_time", "0")))
    except (KeyError, IndexError, ValueError, ZeroDivisionError):
        return None
    offset = input_offset_ticks(start_s, start_us, tb)
    shown = [p for p in head.get("packets", []) if "D" not in p.get("flags", "") and _is_int(p.get("pts"))]
    # A single pass with -ss keeps the frames from the window's start on (accurate seek); without, all.
    first = [int(p["pts"]) for p in shown if start_s == 0 or int(p["pts"]) + offset >= 0]
    keys = cuts.get("packets", [])
    if len(keys) != len(targets) or not all("K" in p.get("flags", "") and _is_int(p.get("pts")) for p in keys):
        return None  # a seek that did not land on a key frame: do not trust the file's index
    return Seams(time_base=tb, start_us=start_us, first_pts=min(first) if first else None,
                 keyframes=tuple(sorted({int(p["pts"]) for p in keys})))


def _is_int(value) -> bool:
    try:
        int(value)
    except (TypeError, ValueError):
        return False
    return True


async def _ffprobe(argv: list[str], timeout_s: float) -> dict | None:
    try:
        proc = await fftools.start(argv)
    except fftools.ToolMissing:
        return None
    try:
        out = await asyncio.wait_for(_read_all(proc.stdout), timeout_s)
        rc = await asyncio.wait_for(proc.wait(), timeout_s)
    except asyncio.TimeoutError:
        return None
    finally:
        await fftools.stop(proc)
    if rc != 0:
        log.info("ffprobe for seams failed: %s", proc.describe_exit(rc))
        return None
    try:
        return json.loads(out or b"{}")
    except ValueError:
        return None


async def _read_all(stream: asyncio.StreamReader, limit: int = 4 << 20) -> bytes:
    out = bytearray()
    while len(out) <= limit and (chunk := await stream.read(1 << 16)):
        out += chunk
    return bytes(out)


class ProcessBudget:
    """Tokens for ffmpeg decode processes, all extractions of the node together.

    An admitted extraction holds one for its whole life (:meth:`take`, first come first
    served); a segmented one takes more for segments ahead only while some are free and no
    extraction waits for its first (:meth:`try_take`), and gives each back when that ffmpeg ends.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        """Most tokens in use at once since start (for tests and benchmarks)."""
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._listeners: list[asyncio.Future] = []

    def _grant(self) -> None:
        self.in_use += 1
        self.peak = max(self.peak, self.in_use)

    def try_take(self) -> bool:
        if self.in_use < self.limit and not self._waiters:
            self._grant()
            return True
        return False

    async def take(self) -> None:
        """Wait for a token, in arrival order."""
        if self.try_take():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give()  # granted just as the wait was given up: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        self.in_use -= 1
        while self._waiters and self.in_use < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._grant()
                waiter.set_result(None)
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            if not listener.done():
                listener.set_result(None)

    async def freed(self, timeout_s: float) -> None:
        """Return when a token was given back somewhere (or after ``timeout_s``)."""
        listener = asyncio.get_running_loop().create_future()
        self._listeners.append(listener)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(listener, timeout_s)


class _Run:
    """One segment's ffmpeg and the JPEGs read from it, waiting to be streamed in order."""

    def __init__(self, segment: Segment, proc: Supervised, *, buffer_bytes: int, stall_timeout_s: float,
                 on_exit: Callable[["_Run"], None]):
        self.segment = segment
        self.proc = proc
        self.jpegs: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.done = False  # the reader saw the end of ffmpeg's output (or gave up)
        self.released = False  # its process no longer counts against the budget
        self.error: str | None = None
        self.pending = 0  # bytes of an unfinished frame at the end
        self.stalled = False
        self.rc: int | None = None
        self._changed = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._buffer_bytes = buffer_bytes
        self._stall_timeout_s = stall_timeout_s
        self._on_exit = on_exit
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        splitter = JpegSplitter()
        try:
            while True:
                await self._room.wait()  # back-pressure: a full buffer stops the reads, ffmpeg waits
                try:
                    chunk = await asyncio.wait_for(self.proc.stdout.read(READ_CHUNK_BYTES), self._stall_timeout_s)
                except asyncio.TimeoutError:
                    self.stalled = True
                    break
                if not chunk:
                    break
                try:
                    jpegs = splitter.feed(chunk)
                except JpegStreamError as exc:
                    self.error = f"is not a JPEG stream: {exc}"
                    break
                for jpeg in jpegs:
                    self.jpegs.append(jpeg)
                    self.buffered += len(jpeg)
                if self.buffered >= self._buffer_bytes:
                    self._room.clear()
                self._changed.set()
            self.pending = splitter.pending
            if self.error is None and not self.stalled:
                self.rc = await self.proc.wait()
        finally:
            self.done = True
            self._changed.set()
            if self.rc is not None:
                self._on_exit(self)  # exited by itself: its process is free for another segment

    async def next_jpeg(self) -> bytes | None:
        """The next frame of this segment, in order; None at its end."""
        while not self.jpegs:
            if self.done:
                return None
            self._changed.clear()
            await self._changed.wait()
        jpeg = self.jpegs.popleft()
        self.buffered -= len(jpeg)
        if self.buffered < self._buffer_bytes:
            self._room.set()
        return jpeg

    async def stop(self) -> None:
        """Stop the reader and ffmpeg's whole process group, even under cancellation."""
        with anyio.CancelScope(shield=True):
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
            await fftools.stop(self.proc)


class SegmentedExtraction:
    """Several ffmpeg over consecutive segments of one video, streamed as one tar.

    Same surface as :class:`~services.storage_agent.frames.Extraction` (``tar_chunks``,
    ``close``, ``status``, ``progress``, ``frames``, ``bytes``, ``last_t_s``), so the
    Extractor and the routes treat both alike.
    """

    def __init__(self, video: ResolvedVideo, plan, segments: list[Segment], *, budget: ProcessBudget,
                 parallel: int, threads: int, buffer_bytes: int, stall_timeout_s: float,
                 on_close: Callable[["SegmentedExtraction"], None]):
        self.video = video
        self.plan = plan
        self.segments = segments
        self.parallel = parallel
        self.threads = threads
        self.frames = 0
        self.bytes = 0
        self.last_t_s: float | None = None
        self.started_at = time.monotonic()
        self.most_at_once = 0
        """Most of its ffmpeg processes that ran at the same time (for tests and benchmarks)."""
        self._extras = 0  # tokens held beyond the one the Extractor took for this extraction
        self._budget = budget
        self._buffer_bytes = buffer_bytes
        self._stall_timeout_s = stall_timeout_s
        self._on_close = on_close
        self._runs: dict[int, _Run] = {}
        self._streaming = 0  # index of the segment being streamed
        self._wake = asyncio.Event()
        self._closed = False
        self._scheduler: asyncio.Task | None = None
        self._start_error: BaseException | None = None

    async def begin(self) -> None:
        """Start the first segment (raising as starting ffmpeg does), then the scheduler."""
        await self._launch(self.segments[0], extra=False)
        self._scheduler = asyncio.create_task(self._schedule())

    async def tar_chunks(self) -> AsyncIterator[bytes]:
        """Tar bytes, one frame member per chunk, segment after segment, ending with ``end.json``."""
        try:
            error = None
            for segment in self.segments:
                self._streaming = segment.index
                self._wake.set()
                run = await self._run_of(segment)
                if run is None:
                    error = f"could not start ffmpeg for a segment of {self.video.path!r}: {self._start_error}"
                    break
                got = 0
                while (jpeg := await run.next_jpeg()) is not None:
                    index = segment.first + got
                    got += 1
                    self.frames += 1
                    self.last_t_s = t_s = self.plan.timestamp(index)
                    member = frame_member(index + 1, t_s, jpeg)
                    self.bytes += len(member)
                    yield member
                error = self._outcome(run, got)
                await self._finish(run)
                if error is not None:
                    break
            if error is not None:
                log.warning("frames of %s: %s", self.video.path, error)
            yield end_members(StreamEnd(ok=error is None, frames=self.frames, error=error))
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop the scheduler and every segment's ffmpeg, free the slot; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            with anyio.CancelScope(shield=True):
                if self._scheduler is not None:
                    self._scheduler.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await self._scheduler
                for run in list(self._runs.values()):
                    await self._finish(run)
        finally:
            self._give_back_all()
            self._on_close(self)

    def live_processes(self) -> int:
        return sum(not run.released for run in self._runs.values())

    async def _launch(self, segment: Segment, *, extra: bool) -> bool:
        """Start ``segment``'s ffmpeg: on the extraction's own token, or on an ``extra`` one if free."""
        if extra:
            if not self._budget.try_take():
                return False
            self._extras += 1
        starting = asyncio.ensure_future(
            fftools.start(self.plan.argv(self.video.file, segment=segment, threads=self.threads)))
        try:
            # Shielded: a cancel (the client left) must not lose a process already forked.
            proc = await asyncio.shield(starting)
        except BaseException:
            with contextlib.suppress(BaseException):
                await fftools.stop(await starting)
            if extra:
                self._give_extra()
            raise
        self._runs[segment.index] = _Run(segment, proc, buffer_bytes=self._buffer_bytes,
                                         stall_timeout_s=self._stall_timeout_s, on_exit=self._release)
        self.most_at_once = max(self.most_at_once, self.live_processes())
        self._wake.set()
        return True

    def _give_extra(self) -> None:
        if self._extras > 0:
            self._extras -= 1
            self._budget.give()

    def _release(self, run: _Run) -> None:
        """``run``'s ffmpeg ended: its token goes back (the extraction keeps its own one)."""
        if not run.released:
            run.released = True
            while self._extras > max(0, self.live_processes() - 1):
                self._give_extra()
            self._wake.set()

    async def _schedule(self) -> None:
        """Start the following segments in order: one always runs (on the extraction's token),
        more while the node has tokens free, none more than ``parallel`` ahead of the one being
        streamed (bounded memory)."""
        try:
            for segment in self.segments[1:]:
                while not self._closed:
                    live = self.live_processes()
                    if segment.index < self._streaming + self.parallel:
                        if live == 0 and await self._launch(segment, extra=False):
                            break
                        if 0 < live < self.parallel and await self._launch(segment, extra=True):
                            break
                    await self._wait()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # ffmpeg gone missing meanwhile
            self._start_error = exc
            self._wake.set()

    async def _wait(self) -> None:
        """Until something changes here (a segment ended, streaming moved on) or elsewhere (a process ended)."""
        self._wake.clear()
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._budget.freed(5.0))]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _run_of(self, segment: Segment) -> _Run | None:
        while segment.index not in self._runs:
            if self._start_error is not None or self._closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        return self._runs[segment.index]

    async def _finish(self, run: _Run) -> None:
        try:
            await run.stop()
        finally:
            self._release(run)

    def _give_back_all(self) -> None:
        while self._extras:
            self._give_extra()

    def _outcome(self, run: _Run, got: int) -> str | None:
        """Why this segment's frames are not to be trusted, or None."""
        path, segment = self.video.path, run.segment
        where = f"segment {segment.index + 1} of {len(self.segments)} of {path!r}"
        if run.stalled:
            return f"ffmpeg produced nothing for {self._stall_timeout_s:g} s on {where} and was stopped"
        if run.error is not None:
            return f"ffmpeg's output for {where} {run.error}"
        reason = fftools.reason_from_log(list(run.proc.stderr_tail), self.video.file)
        rc = run.rc if run.rc is not None else -9
        if rc != 0:
            return f"ffmpeg failed on {where}: {reason if rc > 0 and reason else run.proc.describe_exit(rc)}"
        if run.pending:
            return f"ffmpeg's output for {where} ended inside a frame"
        if segment.frames is not None and got != segment.frames:
            return (f"ffmpeg gave {got} frames for {where} where a single pass gives {segment.frames}"
                    + (f": {reason}" if reason else ""))
        expected = self.plan.expected_frames
        if segment.frames is None and expected is not None and self.frames < expected - 1 and reason:
            return f"ffmpeg stopped after {self.frames} of about {expected} frames of {path!r}: {reason}"
        return None
