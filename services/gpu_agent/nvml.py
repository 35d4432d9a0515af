"""GPU telemetry through NVML, behind a small interface so tests can feed recorded readings.

A machine with no NVIDIA driver is normal (a CPU-only node): it reports no GPUs and the
reason, never an error.
"""

from __future__ import annotations

import threading
from typing import Protocol

from shared.gpu import GpuInfo, GpuProcess

_MIB = 1024 * 1024


class GpuProbe(Protocol):
    def read(self) -> tuple[list[GpuInfo], str | None]:
        """The GPUs now, and why NVML could not be read (None when it could)."""


class NvmlProbe:
    """Reads GPUs with the maintained ``nvidia-ml-py`` bindings (imported as ``pynvml``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._initialised = False
        self._init_error: str | None = None

    def _init(self):
        import pynvml

        if not self._initialised and self._init_error is None:
            try:
                pynvml.nvmlInit()
                self._initialised = True
            except pynvml.NVMLError as exc:
                self._init_error = f"NVML unavailable ({exc}): no NVIDIA driver, CPU backends only"
        return pynvml

    def read(self) -> tuple[list[GpuInfo], str | None]:
        with self._lock:
            pynvml = self._init()
            if not self._initialised:
                return [], self._init_error
            try:
                return [self._read_one(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount())], None
            except pynvml.NVMLError as exc:
                return [], f"NVML read failed: {exc}"

    @staticmethod
    def _read_one(pynvml, index: int) -> GpuInfo:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        try:
            util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
        except pynvml.NVMLError:
            util = None
        try:
            temp = pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
        except pynvml.NVMLError:
            temp = None
        try:
            power_w = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
        except pynvml.NVMLError:
            power_w = None
        try:
            processes = [GpuProcess(pid=p.pid, used_memory_mib=(p.usedGpuMemory // _MIB) if p.usedGpuMemory else None)
                         for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)]
        except pynvml.NVMLError:
            processes = []
        name = pynvml.nvmlDeviceGetName(handle)
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        return GpuInfo(
            index=index,
            name=name.decode() if isinstance(name, bytes) else name,
            uuid=uuid.decode() if isinstance(uuid, bytes) else uuid,
            memory_total_mib=mem.total // _MIB,
            memory_used_mib=mem.used // _MIB,
            memory_free_mib=mem.free // _MIB,
            utilization_pct=util,
            temperature_c=temp,
            power_w=power_w,
            processes=processes,
        )


class RecordedProbe:
    """A fake probe that replays fixed readings; for tests, where no GPU exists."""

    def __init__(self, gpus: list[GpuInfo], error: str | None = None):
        self.gpus = gpus
        self.error = error

    def read(self) -> tuple[list[GpuInfo], str | None]:
        return list(self.gpus), self.error
