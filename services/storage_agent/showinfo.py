"""ffmpeg run with the ``showinfo`` filter: each output frame's timestamp, read from its log.

Key frames fall where the encoder put them, so a keyframes-only extraction cannot compute
its timestamps in advance as the ``fps`` filter allows. ``showinfo`` logs every frame that
reaches it (``n: 0 pts: 10240 pts_time:1 ...``) before the frame is encoded, so its line is
in the stderr pipe before the JPEG is in the stdout pipe; the reader waits for it. ffmpeg
then runs at ``-loglevel level+info`` (each line tagged with its level): the showinfo lines
are parsed, errors and worse are kept for reasons, the rest is dropped.
"""

from __future__ import annotations

import asyncio
import re

from shared.procs import Supervised

LOGLEVEL = "level+info"
_SHOWINFO = re.compile(r"\[info\] n:\s*\d+\s+pts:\s*\S+\s+pts_time:(\S+)")
_LEVEL = re.compile(r"\[(panic|fatal|error|warning|info|verbose|debug|trace)\] ")
_KEPT_LEVELS = {"panic", "fatal", "error"}


class ShowinfoProcess(Supervised):
    """A :class:`Supervised` ffmpeg whose stderr also yields ``frame_times`` (seconds, output order)."""

    def __init__(self, *args, **kwargs):
        self.frame_times: list[float] = []
        self._changed = asyncio.Event()
        self._stderr_ended = False
        super().__init__(*args, **kwargs)  # starts _drain_stderr, so the fields above come first

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        try:
            while line := await self.proc.stderr.readline():
                text = line.decode(errors="replace").rstrip()
                if m := _SHOWINFO.search(text):
                    try:
                        self.frame_times.append(float(m.group(1)))
                    except ValueError:  # "NOPTS": keep the count right, the time unknown
                        self.frame_times.append(float("nan"))
                    self._changed.set()
                elif (level := _LEVEL.search(text)) and level.group(1) in _KEPT_LEVELS:
                    self.stderr_tail.append(text[:level.start()] + text[level.end():])
        finally:
            self._stderr_ended = True
            self._changed.set()

    async def frame_time(self, index: int, *, timeout_s: float) -> float | None:
        """Timestamp of output frame ``index`` (from 0); None if ffmpeg never logged it."""
        while len(self.frame_times) <= index and not self._stderr_ended:
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        return self.frame_times[index] if index < len(self.frame_times) else None
