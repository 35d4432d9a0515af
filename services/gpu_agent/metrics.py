"""The gpu agent's Prometheus metrics, read from the probe and the job manager at scrape time.

- ``cosma_gpu_up`` — 1 when NVML could be read, else 0 (a CPU-only node reads 0).
- ``cosma_gpu_memory_total_mib`` / ``_used_mib`` / ``_free_mib``, ``cosma_gpu_utilization_percent``,
  ``cosma_gpu_temperature_celsius`` — per GPU (labels ``gpu`` index, ``name``, ``uuid``).
- ``cosma_gpu_jobs{state}`` — jobs this agent holds, by state (every state, zeros included).
- ``cosma_gpu_frames_ingested_total`` — frames written to job folders since the agent started.
- ``cosma_gpu_stage_duration_seconds{stage}`` — how long ingest and reconstruction took, per job.
- ``cosma_gpu_stage_frames_per_second{stage}`` — frame rate of the last finished ingest / reconstruction.
"""

from __future__ import annotations

from typing import Iterable

from fastapi import FastAPI
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from shared.jobs import JobState
from shared.metrics import ScrapeCollector

_GPU_LABELS = ["gpu", "name", "uuid"]


def install_gpu_metrics(app: FastAPI) -> None:
    """Register the scrape-time collector on ``app.state.metrics``; reads ``app.state.probe`` and ``.manager``."""
    app.state.metrics.register(ScrapeCollector(lambda: collect_gpu_metrics(app)))


def collect_gpu_metrics(app: FastAPI) -> Iterable[Metric]:
    gpus, error = app.state.probe.read()
    yield GaugeMetricFamily("cosma_gpu_up", "1 when NVML could be read", value=0 if error else 1)
    gauges = {
        "memory_total_mib": GaugeMetricFamily("cosma_gpu_memory_total_mib", "GPU memory, MiB", labels=_GPU_LABELS),
        "memory_used_mib": GaugeMetricFamily("cosma_gpu_memory_used_mib", "GPU memory in use, MiB",
                                             labels=_GPU_LABELS),
        "memory_free_mib": GaugeMetricFamily("cosma_gpu_memory_free_mib", "GPU memory free, MiB",
                                             labels=_GPU_LABELS),
        "utilization_pct": GaugeMetricFamily("cosma_gpu_utilization_percent", "GPU utilisation, %",
                                             labels=_GPU_LABELS),
        "temperature_c": GaugeMetricFamily("cosma_gpu_temperature_celsius", "GPU temperature, °C",
                                           labels=_GPU_LABELS),
    }
    for gpu in gpus:
        labels = [str(gpu.index), gpu.name, gpu.uuid]
        for field, family in gauges.items():
            value = getattr(gpu, field)
            if value is not None:  # utilisation and temperature are optional in NVML
                family.add_metric(labels, value)
    yield from gauges.values()

    manager = getattr(app.state, "manager", None)  # set in the lifespan
    jobs = list(manager.jobs.values()) if manager is not None else []
    by_state = GaugeMetricFamily("cosma_gpu_jobs", "Jobs held by this agent, by state", labels=["state"])
    for state in JobState:
        by_state.add_metric([state.value], sum(1 for job in jobs if job.state == state))
    yield by_state
    if manager is not None:
        yield from manager.frames_ingested.collect()
        yield from manager.stage_seconds.collect()
        yield from manager.stage_fps.collect()
    else:
        yield CounterMetricFamily("cosma_gpu_frames_ingested", "Frames written to job folders", value=0)
