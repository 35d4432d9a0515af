"""Reading ``/metrics`` in tests, and the names ``docs/metrics.md`` documents per service."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

METRICS_DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def scrape(url: str) -> dict[str, list]:
    """Sample name (``cosma_http_requests_total``, ``…_bucket``) → its samples; no token sent."""
    resp = httpx.get(f"{url}/metrics", timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return parse(resp.text)


def parse(text: str) -> dict[str, list]:
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def documented_names(section: str) -> list[str]:
    """First-column names of the table under ``## {section}`` in docs/metrics.md."""
    text = METRICS_DOC.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"^\| `([a-z_]+)` \|", body, flags=re.M)
    assert names, f"no metric table under '## {section}' in {METRICS_DOC}"
    return names


def value(samples: dict[str, list], name: str, /, **labels: str) -> float:
    """The first sample of ``name`` with these labels; 0 when there is none."""
    for sample in samples.get(name, []):
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return 0.0


def missing_names(samples: dict[str, list], names: list[str]) -> list[str]:
    """Documented names without a sample (a histogram counts by its ``_count``)."""
    return [n for n in names if n not in samples and f"{n}_count" not in samples]
