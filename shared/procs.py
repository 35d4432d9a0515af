"""Supervision of every subprocess (ffmpeg, reconstruction runners, viewers) in one place.

argv lists, never a shell; each child in its own process group so a cancel reaches its
children too; stderr kept in a bounded buffer; SIGTERM, a grace period, then SIGKILL;
exit codes turned into reasons a person can act on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
from pathlib import Path
from typing import Sequence

#: stderr lines kept per process: enough for a reason, bounded for hour-long runs.
STDERR_TAIL_LINES = 200


class Supervised:
    """A started child process. Read ``stdout`` yourself; stderr is drained into a tail."""

    def __init__(self, argv: Sequence[str], proc: asyncio.subprocess.Process, log_path: Path | None = None):
        self.argv = list(argv)
        self.proc = proc
        self.log_path = log_path
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._stderr_task = asyncio.create_task(self._drain_stderr())

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike | None = None,
        env: dict[str, str] | None = None,
        stdout_limit: int = 2**20,
        log_path: Path | None = None,
    ) -> "Supervised":
        """Start ``argv``; with ``log_path``, its stderr is also appended to that file."""
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=stdout_limit,
        )
        return cls(argv, proc, log_path)

    @property
    def stdout(self) -> asyncio.StreamReader:
        assert self.proc.stdout is not None
        return self.proc.stdout

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        log = open(self.log_path, "a", buffering=1, errors="replace") if self.log_path else None
        try:
            while line := await self.proc.stderr.readline():
                text = line.decode(errors="replace").rstrip()
                self.stderr_tail.append(text)
                if log is not None:
                    log.write(text + "\n")
        finally:
            if log is not None:
                log.close()

    async def wait(self) -> int:
        rc = await self.proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self._stderr_task
        return rc

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def terminate(self, grace_s: float = 5.0) -> int:
        """SIGTERM to the whole group, SIGKILL after ``grace_s``; returns the exit code."""
        # Process.wait() also waits for the pipes to close: with nobody reading stdout any
        # more (a client went away) it would wait forever, so drain it while stopping.
        drain = asyncio.ensure_future(self._discard_stdout())
        try:
            if self.proc.returncode is None:
                self._signal_group(signal.SIGTERM)
                try:
                    await asyncio.wait_for(self.proc.wait(), grace_s)
                except asyncio.TimeoutError:
                    self._signal_group(signal.SIGKILL)
            rc = await self.proc.wait()
        finally:
            drain.cancel()
        # Grandchildren may outlive the leader; the group must not.
        self._signal_group(signal.SIGKILL)
        return rc

    async def _discard_stdout(self) -> None:
        with contextlib.suppress(RuntimeError):  # another reader is draining it already
            while await self.stdout.read(1 << 16):
                pass

    def describe_exit(self, returncode: int) -> str:
        return describe_exit(os.path.basename(self.argv[0]), returncode, list(self.stderr_tail))


def describe_exit(program: str, returncode: int, stderr_tail: list[str]) -> str:
    """A sentence saying why ``program`` stopped, from its exit code and last stderr lines."""
    text = "\n".join(stderr_tail)
    last = next((line.strip() for line in reversed(stderr_tail) if line.strip()), "")
    if "CUDA out of memory" in text or "OutOfMemoryError" in text:
        return (f"{program} ran out of GPU memory; try fewer frames, a smaller width, "
                "or a node with more free VRAM")
    if returncode in (-signal.SIGKILL, 137):
        return (f"{program} was killed (SIGKILL), most often by the kernel's out-of-memory killer; "
                "try fewer frames or a smaller width")
    if returncode in (-signal.SIGTERM, 143):
        return f"{program} was stopped (SIGTERM)"
    if returncode < 0:
        return f"{program} died from signal {signal.Signals(-returncode).name}"
    return f"{program} exited with code {returncode}" + (f": {last}" if last else "")
