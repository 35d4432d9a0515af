"""The core's Prometheus metrics: jobs and nodes read from the store at scrape time, and the scheduler's own.

- ``cosma_core_jobs{state}`` — jobs in the store by state (every state, zeros included).
- ``cosma_core_nodes{role,state}`` — registered nodes by role and state (every pair, zeros included).
- ``cosma_core_scheduler_tick_seconds`` — histogram of scheduler rounds (poll, follow, place).
- ``cosma_core_placements_total{node}`` — jobs placed on a gpu node.
- ``cosma_core_lease_expiries_total{node}`` — jobs requeued because their node stayed silent past the lease.
- ``cosma_core_agent_poll_failures_total{node}`` — failed polls of a node's status or of a job on it.
"""

from __future__ import annotations

import contextlib
import time
from typing import AsyncIterator, Iterable

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlmodel import select

from shared.jobs import JobState
from shared.metrics import ScrapeCollector
from services.core.store import Store
from services.core.tables import Job, Node, NodeRole, NodeState

#: Ticks are ~10 ms idle and up to seconds with thousands of queued jobs.
TICK_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class SchedulerMetrics:
    """The scheduler's counters, made unregistered; :func:`install_core_metrics` adds them to the app's registry."""

    def __init__(self) -> None:
        self.tick_seconds = Histogram("cosma_core_scheduler_tick_seconds", "Duration of scheduler rounds",
                                      buckets=TICK_BUCKETS_S, registry=None)
        self.placements = Counter("cosma_core_placements", "Jobs placed on a gpu node", ["node"], registry=None)
        self.lease_expiries = Counter("cosma_core_lease_expiries",
                                      "Jobs requeued because their node was silent past the lease", ["node"],
                                      registry=None)
        self.poll_failures = Counter("cosma_core_agent_poll_failures",
                                     "Failed polls of a node's status or of one of its jobs", ["node"],
                                     registry=None)

    def collectors(self):
        return (self.tick_seconds, self.placements, self.lease_expiries, self.poll_failures)


@contextlib.asynccontextmanager
async def timed(histogram: Histogram) -> AsyncIterator[None]:
    """Observe the duration of an ``async with`` block, exceptions included."""
    started = time.perf_counter()
    try:
        yield
    finally:
        histogram.observe(time.perf_counter() - started)


def install_core_metrics(registry: CollectorRegistry, store: Store, scheduler_metrics: SchedulerMetrics) -> None:
    for collector in scheduler_metrics.collectors():
        registry.register(collector)
    registry.register(ScrapeCollector(lambda: collect_store_metrics(store)))


def collect_store_metrics(store: Store) -> Iterable[Metric]:
    """Counts by state, one grouped query per table (indexed on ``state``)."""
    with store.session() as session:
        job_counts = dict(session.exec(select(Job.state, sa.func.count()).group_by(Job.state)).all())
        node_counts = session.exec(select(Node.role, Node.state, sa.func.count())
                                   .group_by(Node.role, Node.state)).all()
    jobs = GaugeMetricFamily("cosma_core_jobs", "Jobs in the store, by state", labels=["state"])
    for state in JobState:
        jobs.add_metric([state.value], job_counts.get(state, 0))
    yield jobs
    counts = {(_value(role), _value(state)): count for role, state, count in node_counts}
    nodes = GaugeMetricFamily("cosma_core_nodes", "Registered nodes, by role and state", labels=["role", "state"])
    for role in NodeRole:
        for state in NodeState:
            nodes.add_metric([role.value, state.value], counts.get((role.value, state.value), 0))
    yield nodes


def _value(v) -> str:
    return getattr(v, "value", v)
