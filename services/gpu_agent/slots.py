"""Reconstruction slots: how many backends run at once, on the CPU and on each GPU.

``wait=False`` takes a slot only if one is free now, else raises :class:`Busy`: a job that
would stream its frames into the backend asks so while it holds an ingest slot, and a job
never waits for a reconstruction slot while holding an ingest slot (no deadlock).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import AsyncIterator

from services.gpu_agent.nvml import GpuProbe


class NoGpu(Exception):
    pass


class Busy(Exception):
    """No slot is free right now (only with ``wait=False``)."""


class Slots:
    """``cpu_jobs`` CPU reconstructions at once; ``jobs_per_gpu`` per GPU, on the GPU with most free memory."""

    def __init__(self, probe: GpuProbe, *, cpu_jobs: int, jobs_per_gpu: int):
        self._probe = probe
        self._cpu = asyncio.Semaphore(cpu_jobs)
        self._per_gpu = jobs_per_gpu
        self._running: collections.Counter[int] = collections.Counter()
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def cpu(self, *, wait: bool = True) -> AsyncIterator[None]:
        if not wait and self._cpu.locked():
            raise Busy("every CPU reconstruction slot is taken")
        async with self._cpu:
            yield None

    @contextlib.asynccontextmanager
    async def gpu(self, prefer: int | None = None, *, wait: bool = True) -> AsyncIterator[int]:
        """Wait for a GPU with a free slot (``prefer``'s when it is free); yields its index."""
        async with self._changed:
            while True:
                gpus, error = await asyncio.to_thread(self._probe.read)
                if not gpus:
                    raise NoGpu(error or "no GPU on this node")
                free = [g for g in gpus if self._running[g.index] < self._per_gpu]
                if free:
                    chosen = [g for g in free if g.index == prefer] or free
                    index = max(chosen, key=lambda g: g.memory_free_mib).index
                    self._running[index] += 1
                    break
                if not wait:
                    raise Busy("every GPU reconstruction slot is taken")
                await self._changed.wait()
        try:
            yield index
        finally:
            async with self._changed:
                self._running[index] -= 1
                self._changed.notify_all()

    def running(self) -> dict[int, int]:
        return {i: n for i, n in self._running.items() if n}
