"""QC inside the gpu agent: measured during ingest from a real storage agent, filtering before
the backend, reports written and served. One case runs the real colmap backend."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from conftest import TOKEN, serve_app, wait_until
from qc_media import BLACK, BLURRED, FROZEN, add_flaws, render_clean
from services.gpu_agent import jobs as jobs_module
from services.gpu_agent.app import create_app
from services.gpu_agent.config import GpuAgentSettings
from services.gpu_agent.qc import resolve_options
from services.storage_agent.app import create_app as create_storage_app
from services.storage_agent.config import StorageSettings
from shared.cameras import read_cameras
from shared.jobs import ExtractParams, JobSpec, VideoSource
from shared.qc import FrameFilter, FrameRange, QcOptions, QcReport, QcThresholds

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAKE_BACKEND = Path(__file__).with_name("qc_fake_backend.py")


@pytest.fixture(scope="module")
def storage_url(tmp_path_factory):
    videos = tmp_path_factory.mktemp("videos")
    clean = render_clean(videos, "GX010001.MP4", seconds=4.0)
    add_flaws(render_clean(videos, "GX010002.MP4"), videos / "GX010003.MP4")
    assert clean.exists()
    with serve_app(create_storage_app(StorageSettings(roots=[videos], token=TOKEN))) as url:
        yield url


def run_job(url: str, storage_url: str, path: str, *, qc: QcOptions | None = None, timeout_s: float = 60) -> dict:
    spec = JobSpec(job_id=1, videos=[VideoSource(storage_url=storage_url, path=path)],
                   extract=ExtractParams(fps=10, width=320), qc=qc)  # fmt: skip
    resp = httpx.put(f"{url}/jobs/1", json=spec.model_dump(mode="json"), headers=AUTH)
    assert resp.status_code == 201, resp.text

    def final():
        job = httpx.get(f"{url}/jobs/1", headers=AUTH).json()
        return job if job["state"] in ("done", "failed") else None

    return wait_until(final, timeout_s=timeout_s, what="the job to end")


def test_filtered_job_gives_the_backend_only_kept_frames_and_serves_the_report(tmp_path, storage_url, monkeypatch):
    # FAKE backend (labelled): records which frames the job manager handed over.
    monkeypatch.setattr(jobs_module, "runner_argv", lambda backend, frames_dir, out_dir, **options: [
        sys.executable, str(FAKE_BACKEND), "--frames", str(frames_dir), "--out", str(out_dir)])
    settings = GpuAgentSettings(workdir=tmp_path / "frames", token=TOKEN)
    with serve_app(create_app(settings)) as url:
        job = run_job(url, storage_url, "GX010003.MP4", qc=QcOptions(filter=FrameFilter()))
        assert job["state"] == "done", job
        for name in ("qc.json", "report.html", "sharpness.svg", "brightness.svg", "trajectory.svg", "frames_qc.csv"):
            assert name in job["files"]
            resp = httpx.get(f"{url}/jobs/1/files/{name}", headers=AUTH)
            assert resp.status_code == 200 and resp.content, name
        report = QcReport.model_validate_json(httpx.get(f"{url}/jobs/1/files/qc.json", headers=AUTH).content)

    assert report.frames.blurry.ranges == [FrameRange(first=BLURRED[0], last=BLURRED[1])]
    assert report.frames.black.ranges == [FrameRange(first=BLACK[0], last=BLACK[1])]
    assert report.frames.duplicate.ranges == [FrameRange(first=FROZEN[0], last=FROZEN[1])]
    assert {r.code for r in report.verdict.reasons} == {"blurry_frames", "black_frames", "duplicate_frames"}
    dropped = {n for a, b in (BLURRED, BLACK, FROZEN) for n in range(a, b + 1)}
    seen = {f.index for f in read_cameras(settings.workdir / "job_1" / "cameras.json").frames}
    assert seen and not seen & dropped
    assert len(seen) == report.frames.kept == report.frames.count - len(dropped)
    assert report.reconstruction.frames_used == len(seen)


def test_failed_reconstruction_keeps_a_frame_report(tmp_path, storage_url, monkeypatch):
    monkeypatch.setattr(jobs_module, "runner_argv", lambda *a, **k: [sys.executable, "-c", "raise SystemExit(3)"])
    settings = GpuAgentSettings(workdir=tmp_path / "frames", token=TOKEN)
    with serve_app(create_app(settings)) as url:
        job = run_job(url, storage_url, "GX010003.MP4")
        assert job["state"] == "failed" and job["error"].startswith("reconstruction failed"), job
    report = QcReport.model_validate_json((settings.workdir / "job_1" / "qc.json").read_text())
    assert report.verdict.status == "fail" and report.reconstruction is None
    assert report.verdict.reasons[0].code == "reconstruction_failed"
    assert report.frames.black.count == BLACK[1] - BLACK[0] + 1
    assert (settings.workdir / "job_1" / "report.html").exists()


@pytest.mark.slow
def test_clean_survey_reconstructed_by_colmap_passes(tmp_path, storage_url):
    settings = GpuAgentSettings(workdir=tmp_path / "frames", token=TOKEN, qc_filter_frames=True)
    with serve_app(create_app(settings)) as url:
        job = run_job(url, storage_url, "GX010001.MP4", timeout_s=300)
    assert job["state"] == "done", job
    report = QcReport.model_validate_json((settings.workdir / "job_1" / "qc.json").read_text())
    assert report.verdict.status == "pass", report.verdict.reasons
    assert report.frames.dropped == 0
    recon = report.reconstruction
    assert recon.frames_registered == recon.frames_used == report.frames.count == 40
    assert recon.points > 500 and recon.jumps == [] and recon.gaps == []
    colmap = recon.colmap
    assert colmap.mean_reprojection_error_px < 1.5 and colmap.mean_track_length > 2
    assert colmap.mean_keypoints_per_frame > 200


def test_thresholds_come_from_the_job_then_the_agent_file_then_the_defaults(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text('{"blurry_warn": 0.3, "blurry_fail": 0.5}')
    settings = GpuAgentSettings(workdir=tmp_path, token=TOKEN, qc_thresholds_file=path, qc_filter_frames=True)
    spec = JobSpec(job_id=1, videos=[VideoSource(storage_url="http://s", path="a.MP4")])
    thresholds, frame_filter = resolve_options(spec, settings)
    assert thresholds.blurry_warn == 0.3 and thresholds.sharpness_min == QcThresholds().sharpness_min
    assert frame_filter == FrameFilter(enabled=True)
    own = spec.model_copy(update={"qc": QcOptions(thresholds=QcThresholds(), filter=FrameFilter(enabled=False))})
    assert resolve_options(own, settings) == (QcThresholds(), FrameFilter(enabled=False))
    assert resolve_options(spec, GpuAgentSettings(workdir=tmp_path, token=TOKEN)) == (
        QcThresholds(), FrameFilter(enabled=False))


def test_a_bad_thresholds_file_stops_the_agent_at_start(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text('{"blurry_warn": 0.5, "blurry_fail": 0.3}')
    with pytest.raises(ValidationError, match="blurry_fail must not be below blurry_warn"):
        GpuAgentSettings(workdir=tmp_path, token=TOKEN, qc_thresholds_file=path)
