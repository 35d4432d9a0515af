"""The storage agent's Prometheus metrics, read from its roots and extractor at scrape time.

- ``cosma_storage_disk_free_bytes{root}``, ``cosma_storage_disk_total_bytes{root}`` — per root
  (absent for a root whose disk cannot be read).
- ``cosma_storage_extractions_running``, ``cosma_storage_extractions_max`` — ffmpeg slots.
- ``cosma_storage_decode_processes``, ``cosma_storage_decode_processes_max`` — ffmpeg decode
  process tokens in use (one per extraction, more for segments decoded in parallel) and the limit.
- ``cosma_storage_frames_extracted_total``, ``cosma_storage_bytes_streamed_total`` — frames and
  tar bytes of frames sent since the agent started (running extractions included).
"""

from __future__ import annotations

import shutil
from typing import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from shared.metrics import ScrapeCollector
from services.storage_agent.api.deps import StorageAgent


def install_storage_metrics(registry, agent: StorageAgent) -> None:
    registry.register(ScrapeCollector(lambda: collect_storage_metrics(agent)))


def collect_storage_metrics(agent: StorageAgent) -> Iterable[Metric]:
    free = GaugeMetricFamily("cosma_storage_disk_free_bytes", "Free space on each root's disk", labels=["root"])
    total = GaugeMetricFamily("cosma_storage_disk_total_bytes", "Size of each root's disk", labels=["root"])
    for root in agent.roots.given:
        try:
            usage = shutil.disk_usage(root)
        except OSError:
            continue
        free.add_metric([str(root)], usage.free)
        total.add_metric([str(root)], usage.total)
    yield free
    yield total
    extractor = agent.extractor
    running = list(extractor.running)
    yield GaugeMetricFamily("cosma_storage_extractions_running", "ffmpeg frame extractions running",
                            value=len(running))
    yield GaugeMetricFamily("cosma_storage_extractions_max", "ffmpeg frame extractions allowed at once",
                            value=extractor.max_concurrent)
    yield GaugeMetricFamily("cosma_storage_decode_processes", "ffmpeg decode processes held (segments included)",
                            value=extractor.processes.in_use)
    yield GaugeMetricFamily("cosma_storage_decode_processes_max", "ffmpeg decode processes allowed at once",
                            value=extractor.processes.limit)
    frames, sent_bytes = extractor.totals()
    yield CounterMetricFamily("cosma_storage_frames_extracted", "Frames extracted and sent", value=frames)
    yield CounterMetricFamily("cosma_storage_bytes_streamed", "Tar bytes of frames sent", value=sent_bytes)
