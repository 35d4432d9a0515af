"""The gpu agent's /metrics: GPU readings (a RECORDED probe: no GPU here), jobs by state, frames ingested
from a real storage agent."""

from __future__ import annotations

import httpx

from conftest import TOKEN, make_test_video, serve_app, wait_until
from metrics_scrape import documented_names, missing_names, scrape, value
from services.gpu_agent.app import create_app
from services.gpu_agent.config import GpuAgentSettings
from services.gpu_agent.nvml import RecordedProbe
from services.storage_agent.app import create_app as create_storage_app
from services.storage_agent.config import StorageSettings
from shared.gpu import GpuInfo
from shared.jobs import ExtractParams, JobSpec, VideoSource

AUTH = {"Authorization": f"Bearer {TOKEN}"}
GPU = GpuInfo(index=0, name="NVIDIA GeForce RTX 3090", uuid="GPU-0", memory_total_mib=24576,
              memory_used_mib=1024, memory_free_mib=23552, utilization_pct=7, temperature_c=None)


def test_metrics_show_gpus_jobs_and_frames_ingested(tmp_path):
    make_test_video(tmp_path / "videos" / "GX010001.MP4", seconds=2, fps=10)
    storage = StorageSettings(roots=[tmp_path / "videos"], token=TOKEN)
    probe = RecordedProbe([GPU])
    settings = GpuAgentSettings(workdir=tmp_path / "frames", token=TOKEN, cancel_grace_s=2)
    with serve_app(create_storage_app(storage)) as storage_url, serve_app(create_app(settings, probe=probe)) as url:
        samples = scrape(url)
        labels = {"gpu": "0", "name": GPU.name, "uuid": "GPU-0"}
        assert value(samples, "cosma_gpu_up") == 1
        assert value(samples, "cosma_gpu_memory_free_mib", **labels) == 23552
        assert value(samples, "cosma_gpu_utilization_percent", **labels) == 7
        assert "cosma_gpu_temperature_celsius" not in samples  # NVML did not say: no sample, not a 0
        assert value(samples, "cosma_gpu_jobs", state="extracting") == 0
        assert value(samples, "cosma_gpu_frames_ingested_total") == 0

        spec = JobSpec(job_id=1, videos=[VideoSource(storage_url=storage_url, path="GX010001.MP4")],
                       extract=ExtractParams(fps=5, width=160))
        assert httpx.put(f"{url}/jobs/1", json=spec.model_dump(mode="json"), headers=AUTH).status_code in (200, 201)
        def ingested():
            now = scrape(url)
            return now if value(now, "cosma_gpu_frames_ingested_total") >= 10 else None

        samples = wait_until(ingested, what="10 frames ingested")
        assert sum(value(samples, "cosma_gpu_jobs", state=s) for s in ("extracting", "reconstructing", "done",
                                                                        "failed")) == 1
        httpx.delete(f"{url}/jobs/1", headers=AUTH)
        probe.gpus, probe.error = [], "NVML unavailable (test): CPU backends only"
        samples = scrape(url)
        assert value(samples, "cosma_gpu_up") == 0 and "cosma_gpu_memory_free_mib" not in samples
    assert value(samples, "cosma_gpu_frames_ingested_total") == 10
    assert value(samples, "cosma_http_requests_total", route="/jobs/{job_id}", method="PUT") == 1
    probe.gpus, probe.error = [GPU.model_copy(update={"temperature_c": 41})], None
    with serve_app(create_app(settings, probe=probe)) as url:
        scrape(url)  # HTTP series appear once a request has been answered
        assert missing_names(scrape(url), documented_names("gpu agent") + documented_names("every service")) == []
