"""Frame extraction: ffmpeg on this node, its JPEGs streamed out as a tar while it runs.

:func:`plan_extraction` turns :class:`~shared.videos.FrameParams` and the file's ffprobe
facts into an ffmpeg command; an :class:`Extraction` runs it and yields tar bytes frame by
frame; the :class:`Extractor` caps how many run at once, queues a few more, and stops them
all on shutdown. Back-pressure is end to end: a slow client stops the reads, the pipe
fills, ffmpeg waits.

Past the limit a request waits in a short FIFO queue (its position is in ``GET /status``)
for up to ``extraction_wait_s``; a full queue or a wait that runs out gets 503 with
``Retry-After``. Waiting covers the usual case (a gpu agent pulls its videos one after the
other, another job's video ends soon); holding connections for long would only hide the
load from the core and tie up the client's read timeout, and the gpu agent retries 503s
with backoff anyway.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import AsyncIterator, Callable

import anyio

from shared.errors import BadRequest, Unavailable
from shared.procs import Supervised
from shared.videos import ExtractionStatus, FrameParams, StreamEnd
from services.storage_agent import fftools
from services.storage_agent.showinfo import LOGLEVEL as SHOWINFO_LOGLEVEL, ShowinfoProcess
from services.storage_agent.jpeg import JpegSplitter, JpegStreamError
from services.storage_agent.paths import ResolvedVideo
from services.storage_agent.probe import VideoFacts
from services.storage_agent.segments import (
    ProcessBudget, Segment, SegmentedExtraction, cpu_cores, probe_seams, seam_targets, seconds_text, split_window,
)
from services.storage_agent.tarstream import end_members, frame_member

log = logging.getLogger(__name__)

#: Bytes read from ffmpeg's stdout at a time; a 640-wide frame is ~50 kB.
READ_CHUNK_BYTES = 256 * 1024
#: Largest denominator when turning seconds and rates into fractions. ffmpeg evaluates the
#: "num/den" it is given as a double and keeps num and den within ~1e6, as this does.
_MAX_DENOMINATOR = 1_000_000


#: Segments per process an extraction is cut into at most (when long enough).
SEGMENTS_PER_PROCESS = 3

#: Bounds of the Retry-After a busy answer suggests, in seconds.
RETRY_AFTER_MIN_S = 2
RETRY_AFTER_MAX_S = 120
#: Retry-After when no running extraction gives an estimate yet.
RETRY_AFTER_DEFAULT_S = 10


class Busy(Unavailable):
    code = "busy"

    def __init__(self, message: str, *, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class ExtractionPlan:
    start_s: float
    limit_s: float | None
    """Seconds of video read from ``start_s`` (ffmpeg ``-t``); None reads to the end."""
    rate: Fraction
    """Frames sampled per second; below the asked fps when ``max_frames`` spreads them out."""
    width: int | None
    max_frames: int | None
    quality: int
    expected_frames: int | None
    """What a healthy file yields, when its duration is known (and not in keyframes mode)."""
    window_s: float | None = None
    """Seconds of video the extraction covers, when known."""
    keyframes: bool = False
    """Decode key frames only (``-skip_frame nokey``), thinned to ``rate``; times from showinfo."""

    def timestamp(self, index: int) -> float:
        """Seconds into the video of the frame at ``index`` (from 0) of the output."""
        return self.start_s + float(index / self.rate)

    def argv(self, file: Path, *, segment: Segment | None = None, threads: int | None = None) -> list[str]:
        """The ffmpeg command; for one ``segment`` of a segment-parallel extraction (see
        :mod:`~services.storage_agent.segments`), with ``threads`` decoding and filter threads."""
        seek = ["-ss", f"{self.start_s:.6f}"] if self.start_s > 0 else []
        limit = ["-t", f"{self.limit_s:.6f}"] if self.limit_s is not None else []
        if segment is not None and segment.seek_us is not None:
            # Same timestamps as the single pass (-itsoffset), from the seam's key frame on (trim),
            # to the single pass's end (-t would count from this segment's first frame).
            seek = ["-ss", seconds_text(segment.seek_us), "-itsoffset", seconds_text(segment.offset_us)]
            limit = []
        if self.keyframes:
            # Keep a key frame only if it is at least 1/rate after the last one kept: the fps
            # filter would instead repeat frames to fill the gaps between key frames.
            interval_s = float(1 / self.rate)
            filters = [f"select=isnan(prev_selected_t)+gte(t-prev_selected_t\\,{interval_s:.6f})",
                       "showinfo=checksum=0"]  # per-plane checksums and stats cost ~10 ms a 1080p frame
        else:
            filters = [f"fps=fps={self.rate.numerator}/{self.rate.denominator}"]
        if segment is not None and segment.start_pts is not None:
            end = f":end_pts={segment.end_pts}" if segment.end_pts is not None else ""
            filters.insert(0, f"trim=start_pts={segment.start_pts}{end}")
        if self.width is not None:
            filters.append(f"scale={self.width}:-2")  # -2: even height, as encoders need
        frames = self.max_frames
        if segment is not None:
            frames = segment.frames if segment.frames is not None else (
                None if self.max_frames is None else self.max_frames - segment.first)
        cap = ["-frames:v", str(frames)] if frames is not None else []
        if self.keyframes:
            logging_ = ["-loglevel", SHOWINFO_LOGLEVEL, "-nostats"]
            decode, sync = ["-skip_frame", "nokey"], ["-fps_mode", "passthrough"]
        else:
            logging_, decode, sync = ["-loglevel", "error"], [], []
        if threads is not None:
            logging_ += ["-filter_threads", str(threads)]
            decode = [*decode, "-threads", str(threads)]
        if segment is not None and not sync:
            # The fps filter already made the frames; ffmpeg's default (cfr) output timing
            # would pad a segment starting at slot N with N copies of its first frame.
            sync = ["-fps_mode", "passthrough"]
        return [
            fftools.FFMPEG, "-nostdin", "-hide_banner", *logging_,
            *seek, *limit, *decode, *fftools.input_args(file),
            "-map", "0:v:0", "-vf", ",".join(filters), *sync, *cap,
            "-f", "image2pipe", "-c:v", "mjpeg", "-q:v", str(self.quality), "-",
        ]


def plan_extraction(params: FrameParams, facts: VideoFacts) -> ExtractionPlan:
    """The ffmpeg plan for ``params`` on a video with these facts; :class:`BadRequest` if empty."""
    duration = facts.duration_s
    if duration is not None and params.start_s >= duration:
        raise BadRequest(f"start_s ({params.start_s:g}) is at or past the end of the video ({duration:.3f} s)")
    end = params.end_s
    if duration is not None and (end is None or end > duration):
        end = duration
    window = end - params.start_s if end is not None else None
    rate = _fraction(params.fps)
    if params.max_frames is not None and window is not None:
        # Spread the cap over the whole window rather than taking the first max_frames.
        rate = min(rate, Fraction(params.max_frames) / _fraction(window)).limit_denominator(_MAX_DENOMINATOR)
    expected = None
    if window is not None and not params.keyframes:
        # ffmpeg's fps filter rounds to the nearest frame: floor(x + 0.5) output frames.
        expected = math.floor(rate * _fraction(window) + Fraction(1, 2))
        if params.max_frames is not None:
            expected = min(expected, params.max_frames)
    limit = window if params.end_s is not None and (duration is None or params.end_s < duration) else None
    return ExtractionPlan(
        start_s=params.start_s, limit_s=limit, rate=rate, width=params.width,
        max_frames=params.max_frames, quality=params.quality, expected_frames=expected,
        window_s=window, keyframes=params.keyframes,
    )


def _fraction(value: float) -> Fraction:
    return Fraction(value).limit_denominator(_MAX_DENOMINATOR)


class _Reporting:
    """Progress and status of an extraction, single pass or segmented."""

    video: ResolvedVideo
    plan: ExtractionPlan
    frames: int
    last_t_s: float | None
    started_at: float

    @property
    def progress(self) -> float | None:
        """Share of the work done: frames of those expected, else time covered of the window."""
        if self.plan.expected_frames:
            return min(1.0, self.frames / self.plan.expected_frames)
        if self.plan.window_s:
            covered = 0.0 if self.last_t_s is None else self.last_t_s - self.plan.start_s
            return max(0.0, min(1.0, covered / self.plan.window_s))
        return None

    def status(self) -> ExtractionStatus:
        progress = self.progress
        return ExtractionStatus(
            path=self.video.path, state="running", keyframes=self.plan.keyframes, frames=self.frames,
            expected_frames=self.plan.expected_frames, progress=None if progress is None else round(progress, 4),
            elapsed_s=round(time.monotonic() - self.started_at, 3),
        )


class Extraction(_Reporting):
    """One running ffmpeg and the tar stream of its frames. :meth:`close` is idempotent."""

    def __init__(self, video: ResolvedVideo, plan: ExtractionPlan, proc: Supervised, *,
                 stall_timeout_s: float, on_close: Callable[["Extraction"], None]):
        self.video = video
        self.plan = plan
        self.proc = proc
        self.frames = 0
        self.bytes = 0  # tar bytes of the frame members sent so far
        self.last_t_s: float | None = None
        self.started_at = time.monotonic()
        self._stall_timeout_s = stall_timeout_s
        self._on_close = on_close
        self._closed = False
        self._stalled = False

    async def tar_chunks(self) -> AsyncIterator[bytes]:
        """Tar bytes, one frame member per chunk, ending with ``end.json``."""
        try:
            error = None
            splitter = JpegSplitter()
            while chunk := await self._read():
                try:
                    jpegs = splitter.feed(chunk)
                except JpegStreamError as exc:
                    error = f"ffmpeg's output for {self.video.path!r} is not a JPEG stream: {exc}"
                    break
                for jpeg in jpegs:
                    t_s = await self._timestamp(self.frames)
                    if t_s is None:
                        error = f"ffmpeg did not log the time of frame {self.frames + 1} of {self.video.path!r}"
                        break
                    self.frames += 1
                    self.last_t_s = t_s
                    member = frame_member(self.frames, t_s, jpeg)
                    self.bytes += len(member)
                    yield member
                if error is not None:
                    break
            if error is None:
                error = await self._outcome(splitter.pending)
            if error is not None:
                log.warning("frames of %s: %s", self.video.path, error)
            yield end_members(StreamEnd(ok=error is None, frames=self.frames, error=error))
        finally:
            await self.close()

    async def _timestamp(self, index: int) -> float | None:
        if not isinstance(self.proc, ShowinfoProcess):
            return self.plan.timestamp(index)
        try:
            t = await self.proc.frame_time(index, timeout_s=self._stall_timeout_s)
        except asyncio.TimeoutError:
            return None
        return None if t is None or math.isnan(t) else round(self.plan.start_s + t, 6)

    async def _read(self) -> bytes:
        """The next bytes from ffmpeg; empty at its end, or when it stalled."""
        try:
            return await asyncio.wait_for(self.proc.stdout.read(READ_CHUNK_BYTES), self._stall_timeout_s)
        except asyncio.TimeoutError:
            self._stalled = True
            return b""

    async def _outcome(self, pending_bytes: int) -> str | None:
        """Why the stream is not to be trusted, or None if ffmpeg finished cleanly."""
        path = self.video.path
        if self._stalled:
            await fftools.stop(self.proc)
            return f"ffmpeg produced nothing for {self._stall_timeout_s:g} s on {path!r} and was stopped"
        rc = await self.proc.wait()
        reason = fftools.reason_from_log(list(self.proc.stderr_tail), self.video.file)
        if rc != 0:
            return f"ffmpeg failed on {path!r}: {reason if rc > 0 and reason else self.proc.describe_exit(rc)}"
        if pending_bytes:
            return f"ffmpeg's output for {path!r} ended inside a frame"
        expected = self.plan.expected_frames
        if expected is not None and self.frames < expected - 1 and reason:
            # ffmpeg exits 0 on a file cut short after its index; the log says why.
            return f"ffmpeg stopped after {self.frames} of about {expected} frames of {path!r}: {reason}"
        return None

    async def close(self) -> None:
        """Stop ffmpeg (its whole process group) and free the slot."""
        if self._closed:
            return
        self._closed = True
        try:
            await fftools.stop(self.proc)
        finally:
            self._on_close(self)


class Segmented(_Reporting, SegmentedExtraction):
    """A segment-parallel extraction (:mod:`~services.storage_agent.segments`)."""


@dataclass(eq=False)
class _Waiting:
    path: str
    keyframes: bool
    since: float


class Extractor:
    """At most ``max_concurrent`` extractions at once; up to ``max_queued`` more wait ``wait_s``
    in arrival order, then get :class:`Busy` (503 with ``Retry-After``)."""

    def __init__(self, *, max_concurrent: int, wait_s: float, stall_timeout_s: float, max_queued: int = 8,
                 decode_processes: int = 1, min_segment_s: float = 30.0, segment_buffer_bytes: int = 64 << 20,
                 probe_timeout_s: float = 30.0, cores: int | None = None):
        #: ffmpeg decode processes, all extractions together: each holds one, segments take more.
        self.processes = ProcessBudget(decode_processes)
        self.max_concurrent = min(max_concurrent, decode_processes)
        self.max_queued = max_queued
        self.running: set[Extraction | Segmented] = set()
        self.waiting: collections.deque[_Waiting] = collections.deque()
        #: Frames and tar bytes of ended extractions; with ``running`` they make :meth:`totals`.
        self.frames_done = 0
        self.bytes_done = 0
        self.segmented_total = 0
        """Extractions decoded in several segments since start."""
        self.min_segment_s = min_segment_s
        self.cores = cores or cpu_cores()
        self._segment_buffer_bytes = segment_buffer_bytes
        self._probe_timeout_s = probe_timeout_s
        self._totals_lock = threading.Lock()  # /metrics reads totals from a worker thread
        self._slots = asyncio.Semaphore(self.max_concurrent)  # FIFO for waiters since Python 3.11
        self._wait_s = wait_s
        self._stall_timeout_s = stall_timeout_s

    async def start(self, video: ResolvedVideo, plan: ExtractionPlan, *,
                    segments: int | None = None) -> Extraction | Segmented:
        """Admit an extraction and start its ffmpeg: one, or the first of several time segments.

        ``segments`` caps the processes this extraction may run at once (1 = single pass);
        by default the node's ``decode_processes``.
        """
        await self._acquire(video, plan)  # a slot, and a process token held until close
        try:
            parallel = min(segments or self.processes.limit, self.processes.limit)
            split = await self._split(video, plan, parallel)
            if len(split) > 1:
                parallel = min(parallel, len(split))
                extraction = Segmented(
                    video, plan, split, budget=self.processes, parallel=parallel,
                    threads=max(1, self.cores // parallel), buffer_bytes=self._segment_buffer_bytes,
                    stall_timeout_s=self._stall_timeout_s, on_close=self._closed)
                await extraction.begin()
                self.segmented_total += 1
            else:
                proc = await fftools.start(plan.argv(video.file),
                                           process_class=ShowinfoProcess if plan.keyframes else Supervised)
                extraction = Extraction(video, plan, proc, stall_timeout_s=self._stall_timeout_s,
                                        on_close=self._closed)
        except BaseException:
            self.processes.give()
            self._slots.release()
            raise
        self.running.add(extraction)
        return extraction

    async def _split(self, video: ResolvedVideo, plan: ExtractionPlan, parallel: int) -> list[Segment]:
        """Time segments worth decoding in parallel, or [] for a single pass (see ``segments``)."""
        if parallel < 2 or plan.keyframes or not plan.window_s:
            return []
        # More segments than processes, so that tokens come back often (a waiting request gets
        # the next one) and segments ahead stay short; each seam costs an ffmpeg start and a seek.
        count = min(SEGMENTS_PER_PROCESS * parallel, int(plan.window_s // self.min_segment_s))
        if count < 2:
            return []
        seams = await probe_seams(video.file, plan.start_s, seam_targets(plan.start_s, plan.window_s, count),
                                  timeout_s=self._probe_timeout_s)
        if seams is None:
            log.info("%s: its key frames could not be read for segments; decoding it in one pass", video.path)
            return []
        return split_window(plan.start_s, plan.rate, plan.max_frames, seams, plan.limit_s)

    async def _acquire(self, video: ResolvedVideo, plan: ExtractionPlan) -> None:
        full = self._slots.locked() or self.processes.in_use >= self.processes.limit
        if full and len(self.waiting) >= self.max_queued:
            raise Busy(f"this node already runs {self.max_concurrent} frame extraction(s), its limit, and "
                       f"{len(self.waiting)} more wait; retry later", retry_after_s=self.retry_after_s())
        waiting = _Waiting(video.path, plan.keyframes, time.monotonic())
        self.waiting.append(waiting)
        acquired = False
        try:
            with anyio.move_on_after(self._wait_s):
                await self._slots.acquire()
                try:
                    await self.processes.take()
                except BaseException:
                    self._slots.release()
                    raise
                acquired = True
        finally:
            self.waiting.remove(waiting)
        if not acquired:
            raise Busy(f"this node already runs {self.max_concurrent} frame extraction(s), its limit, "
                       f"and none ended within {self._wait_s:g} s; retry later", retry_after_s=self.retry_after_s())

    def retry_after_s(self) -> int:
        """Seconds until a slot is likely free: the soonest end among running extractions, bounded."""
        estimates = []
        for extraction in list(self.running):
            progress = extraction.progress
            elapsed = time.monotonic() - extraction.started_at
            if progress and progress > 0.01:
                estimates.append(elapsed * (1 - progress) / progress)
        if not estimates:
            return RETRY_AFTER_DEFAULT_S
        return int(min(RETRY_AFTER_MAX_S, max(RETRY_AFTER_MIN_S, math.ceil(min(estimates)))))

    def statuses(self) -> list[ExtractionStatus]:
        """Running extractions (oldest first), then the waiting ones in queue order."""
        now = time.monotonic()
        running = sorted(self.running, key=lambda e: e.started_at)
        return [e.status() for e in running] + [
            ExtractionStatus(path=w.path, state="queued", queue_position=i, keyframes=w.keyframes,
                             elapsed_s=round(now - w.since, 3))
            for i, w in enumerate(list(self.waiting), start=1)
        ]

    def _closed(self, extraction: Extraction | Segmented) -> None:
        with self._totals_lock:
            self.running.discard(extraction)
            self.frames_done += extraction.frames
            self.bytes_done += extraction.bytes
        self.processes.give()  # the extraction's own token; a segmented one gave back its extras
        self._slots.release()

    def totals(self) -> tuple[int, int]:
        """Frames and tar bytes sent since start, running extractions included; safe from any thread."""
        with self._totals_lock:
            running = list(self.running)
            return (self.frames_done + sum(e.frames for e in running),
                    self.bytes_done + sum(e.bytes for e in running))

    async def close_all(self) -> None:
        for extraction in list(self.running):
            await extraction.close()
