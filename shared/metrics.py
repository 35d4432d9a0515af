"""Prometheus metrics every service shares: a registry per app, HTTP counters, ``GET /metrics``.

Each app gets its own :class:`CollectorRegistry` (``app.state.metrics``), never the
process-wide default one: tests build several apps in one process, and a registry holds a
metric name once. Service-specific metrics are added by registering collectors on it; the
preferred kind reads existing state at scrape time (:class:`ScrapeCollector`), so the code
doing the work needs no counters.

Common names (every service):

- ``cosma_build_info{version,role,node_id}`` — always 1.
- ``cosma_http_requests_total{method,route,status}`` — answered requests, by route template
  (``/jobs/{job_id}``, never the raw path, so ids do not multiply series).
- ``cosma_http_request_duration_seconds{method,route}`` — histogram, until the response
  body ends (long for frame streams and ``/events``).
- ``process_*`` — CPU, memory and open files of the service process (Linux).
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

#: Route label of requests that matched no route (any path: keep it out of the labels).
UNMATCHED_ROUTE = "<unmatched>"

#: Request durations span ~1 ms API reads to minutes-long frame streams.
HTTP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def create_registry() -> CollectorRegistry:
    """A fresh registry with the process collector (``process_*``) on it."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    return registry


class ScrapeCollector(Collector):
    """A collector that calls ``collect_fn`` at scrape time; for metrics read from live state."""

    def __init__(self, collect_fn: Callable[[], Iterable[Metric]]):
        self._collect_fn = collect_fn

    def collect(self) -> Iterable[Metric]:
        return list(self._collect_fn())

    def describe(self) -> Iterable[Metric]:
        # Names are only known at scrape time; an empty description skips the duplicate check.
        return []


class HttpMetrics:
    """Pure ASGI middleware counting requests and timing them, by route template and status.

    Pure ASGI rather than ``@app.middleware("http")``: it sees streamed bodies end, and
    adds no task per request to the frame streams.
    """

    def __init__(self, app, *, requests: Counter, duration: Histogram):
        self.app = app
        self.requests = requests
        self.duration = duration

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = route_template(scope)
            method = scope.get("method", "")
            self.requests.labels(method, route, str(status)).inc()
            self.duration.labels(method, route).observe(time.perf_counter() - started)


def route_template(scope) -> str:
    """The matched route's path template, prefixes of included routers included; ``<unmatched>`` if none.

    Recent FastAPI versions keep included routers nested, so ``scope["route"]`` knows only its
    own part (``/jobs/{job_id}``): the prefix is the part of the request path before it.
    """
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    regex = getattr(route, "path_regex", None)
    if not template:
        return UNMATCHED_ROUTE
    path = scope.get("path", "")
    if regex is not None:
        for i, char in enumerate(path):
            if char == "/" and regex.fullmatch(path[i:]):
                return path[:i] + template
    return template


def install_metrics(app: FastAPI, *, role: str, node_id: str, version: str,
                    registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """Add the HTTP middleware and the public ``GET /metrics`` route; the registry goes on ``app.state.metrics``."""
    registry = registry if registry is not None else create_registry()
    app.state.metrics = registry
    Gauge("cosma_build_info", "Version, role and node id of this service (always 1)",
          ["version", "role", "node_id"], registry=registry).labels(version, role, node_id).set(1)
    # Made here, not in the middleware: Starlette builds its middleware stack lazily.
    requests = Counter("cosma_http_requests", "HTTP requests answered, by route template and status",
                       ["method", "route", "status"], registry=registry)
    duration = Histogram("cosma_http_request_duration_seconds",
                         "HTTP request duration until the response body ends, by route template",
                         ["method", "route"], buckets=HTTP_BUCKETS_S, registry=registry)
    app.add_middleware(HttpMetrics, requests=requests, duration=duration)

    @app.get("/metrics", tags=["meta"], response_class=Response)
    def get_metrics() -> Response:
        """Prometheus text format; needs no token (scraped by Telegraf)."""
        # A sync handler: collectors may block (NVML, statvfs, the database), so FastAPI's pool runs it.
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return registry
