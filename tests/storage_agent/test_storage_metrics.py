"""The storage agent's /metrics after a real frame stream (real ffmpeg)."""

from __future__ import annotations

import httpx

from metrics_scrape import documented_names, missing_names, scrape, value
from storage_media import AUTH, layout, media, read_tar, running_agent  # noqa: F401  (fixtures)


def test_metrics_count_frames_and_bytes_streamed_and_disk_per_root(layout):
    root = layout["root"]
    with running_agent(root, max_concurrent_extractions=2) as url:
        before = scrape(url)
        assert value(before, "cosma_storage_frames_extracted_total") == 0
        assert value(before, "cosma_storage_extractions_max") == 2
        resp = httpx.get(f"{url}/videos/GX010042.MP4/frames", params={"fps": 2, "width": 160},
                         headers=AUTH, timeout=60)
        assert resp.status_code == 200
        frames = [m for m, _ in read_tar(resp.content) if m.name.endswith(".jpg")]
        unauthorised = httpx.get(f"{url}/status")
        assert unauthorised.status_code == 401  # the other routes keep their token; /metrics needs none
        samples = scrape(url)
    assert value(samples, "cosma_storage_frames_extracted_total") == len(frames) > 0
    assert 0 < value(samples, "cosma_storage_bytes_streamed_total") <= len(resp.content)
    assert value(samples, "cosma_storage_extractions_running") == 0
    assert value(samples, "cosma_storage_disk_free_bytes", root=str(root)) > 0
    assert value(samples, "cosma_http_requests_total", route="/videos/{path}/frames", status="200") == 1
    assert value(samples, "cosma_http_requests_total", route="/status", status="401") == 1
    assert missing_names(samples, documented_names("storage agent") + documented_names("every service")) == []
