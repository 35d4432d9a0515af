"""shared.metrics: one registry per app, request counts by route template, a public /metrics."""

from __future__ import annotations

import httpx
from fastapi import APIRouter, HTTPException
from fastapi.responses import StreamingResponse
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from conftest import serve_app
from metrics_scrape import documented_names, missing_names, scrape
from shared.metrics import UNMATCHED_ROUTE, ScrapeCollector
from shared.service import make_app


def _app(node_id: str = "n1", registry: CollectorRegistry | None = None):
    app = make_app(title="t", role="gpu", node_id=node_id, metrics=registry)

    @app.get("/items/{item_id}")
    def get_item(item_id: int) -> dict:
        if item_id == 0:
            raise HTTPException(404, "no item 0")
        return {"id": item_id}

    @app.get("/stream")
    def get_stream() -> StreamingResponse:
        return StreamingResponse(iter([b"a", b"b"]), media_type="text/plain")

    api = APIRouter()

    @api.get("/jobs/{job_id}/files/{name}")
    def get_file(job_id: int, name: str) -> dict:
        return {"job": job_id, "name": name}

    app.include_router(api, prefix="/api/v1")
    return app


def _value(samples, name, **labels) -> float:
    for sample in samples.get(name, []):
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return 0.0


def test_apps_in_one_process_have_their_own_registries():
    first, second = _app("a"), _app("b")
    assert first.state.metrics is not second.state.metrics
    given = CollectorRegistry()
    assert _app("c", given).state.metrics is given
    with serve_app(first) as url_a, serve_app(second) as url_b:
        httpx.get(f"{url_a}/items/1")
        a, b = scrape(url_a), scrape(url_b)
    assert _value(a, "cosma_build_info", node_id="a", role="gpu") == 1
    assert _value(b, "cosma_build_info", node_id="b") == 1
    assert _value(a, "cosma_http_requests_total", route="/items/{item_id}") == 1
    assert _value(b, "cosma_http_requests_total", route="/items/{item_id}") == 0


def test_requests_are_counted_by_route_template_and_status():
    with serve_app(_app()) as url:
        for path in ("/api/v1/jobs/7/files/qc.json", "/items/1", "/items/2", "/items/0", "/items/x", "/nowhere/123", "/stream", "/health"):
            httpx.get(f"{url}{path}")
        samples = scrape(url)
    count = "cosma_http_requests_total"
    assert _value(samples, count, method="GET", route="/items/{item_id}", status="200") == 2
    assert _value(samples, count, route="/items/{item_id}", status="404") == 1
    assert _value(samples, count, route="/items/{item_id}", status="422") == 1
    assert _value(samples, count, route=UNMATCHED_ROUTE, status="404") == 1
    assert _value(samples, count, route="/stream", status="200") == 1
    assert _value(samples, count, route="/api/v1/jobs/{job_id}/files/{name}", status="200") == 1
    assert _value(samples, count, route="/health", status="200") == 1
    assert not any("/nowhere" in s.labels.get("route", "") for s in samples[count])
    assert _value(samples, "cosma_http_request_duration_seconds_count", route="/items/{item_id}") == 4


def test_metrics_needs_no_token_and_is_documented():
    with serve_app(_app()) as url:
        resp = httpx.get(f"{url}/metrics")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain; version=")
        httpx.get(f"{url}/health")
        samples = scrape(url)
    assert missing_names(samples, documented_names("every service")) == []


def test_scrape_collectors_read_state_when_scraped():
    app = _app()
    state = {"n": 1}
    app.state.metrics.register(ScrapeCollector(
        lambda: [GaugeMetricFamily("cosma_test_value", "a value read at scrape time", value=state["n"])]))
    with serve_app(app) as url:
        assert _value(scrape(url), "cosma_test_value") == 1
        state["n"] = 5
        assert _value(scrape(url), "cosma_test_value") == 5
