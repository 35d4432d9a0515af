"""QC of whole recordings: real ffmpeg frames of the synthetic survey, with and without flaws.

The reconstruction here is the renderer's ground truth written as a backend would write it
(no pycolmap: that runs once, in test_qc_pipeline.py), so the reconstruction checks are exact.
"""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from qc_media import BLACK, BLURRED, FRAMES, FROZEN, add_flaws, extract_frames, render_clean, write_reconstruction
from services.gpu_agent.qc import JobQc
from services.gpu_agent.qc.frames import CSV_NAME
from shared.frames import FrameIndex
from shared.jobs import JobSpec, VideoSource
from shared.qc import FrameFilter, FrameRange, QcReport, QcThresholds


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("recordings")
    clean = render_clean(base / "videos")
    flawed = add_flaws(clean, base / "videos" / "GX010002.MP4")
    extract_frames(clean, base / "clean")
    extract_frames(flawed, base / "flawed")
    return {"clean": base / "clean", "flawed": base / "flawed", "poses": base / "videos" / "GX010001.poses.json"}


def job(recordings, which: str, tmp_path: Path, *, filter_frames: bool = False) -> tuple[JobQc, list]:
    """A job folder holding one recording's frames, measured as ingest would measure them."""
    job_dir = tmp_path / "job_1"
    shutil.copytree(recordings[which], job_dir)
    spec = JobSpec(job_id=1, videos=[VideoSource(storage_url="http://storage", path=f"{which}.MP4")])
    qc = JobQc(1, job_dir, spec, thresholds=QcThresholds(), frame_filter=FrameFilter(enabled=filter_frames))
    frames = FrameIndex.model_validate_json((job_dir / "frames.json").read_text()).frames
    qc.resume([])
    for frame in frames:
        qc.observe(frame, job_dir / frame.name)
    return qc, frames


def span(first: int, last: int) -> list[FrameRange]:
    return [FrameRange(first=first, last=last)]


def test_flawed_recording_finds_each_stretch_at_its_frames(recordings, tmp_path):
    qc, frames = job(recordings, "flawed", tmp_path)
    assert len(frames) == FRAMES
    write_reconstruction(qc.job_dir, recordings["poses"], frames)
    report = qc.finish()

    assert report.frames.blurry.ranges == span(*BLURRED)
    assert report.frames.black.ranges == span(*BLACK)
    assert report.frames.duplicate.ranges == span(*FROZEN)
    assert report.frames.exposure.count == 0
    reasons = {r.code: r for r in report.verdict.reasons}
    assert set(reasons) == {"blurry_frames", "black_frames", "duplicate_frames"}
    assert report.verdict.status == "warn"
    frozen = reasons["duplicate_frames"]
    assert frozen.severity == "warn" and frozen.measured == pytest.approx(7 / 60) and frozen.threshold == 0.10
    assert frozen.message == ("12% of frames frozen (near-duplicates of the previous frame) (7 frames; "
                              "threshold 10%): frames 41–47")
    assert reasons["black_frames"].frames == span(*BLACK)
    assert reasons["blurry_frames"].message == "17% of frames blurry (10 frames; threshold 15%): frames 9–18"


def test_thresholds_decide_the_severity(recordings, tmp_path):
    qc, frames = job(recordings, "flawed", tmp_path)
    qc.thresholds = QcThresholds(blurry_warn=0.05, blurry_fail=0.10)
    report = qc.finish(error=None)
    blurry = next(r for r in report.verdict.reasons if r.code == "blurry_frames")
    assert blurry.severity == "fail" and blurry.threshold == 0.10
    assert blurry.message == "17% of frames blurry (10 frames; threshold 10%): frames 9–18"
    assert report.verdict.status == "fail"
    assert report.thresholds.blurry_fail == 0.10  # the job records what it was judged by


def test_filtering_hands_the_backend_only_kept_frames(recordings, tmp_path):
    qc, frames = job(recordings, "flawed", tmp_path, filter_frames=True)
    frames_dir = qc.frames_for_backend()
    assert frames_dir == qc.job_dir / "frames_kept"
    dropped = {n for a, b in (BLURRED, BLACK, FROZEN) for n in range(a, b + 1)}
    kept = sorted(p.name for p in frames_dir.glob("frame_*.jpg"))
    assert kept == [f.name for f in frames if f.index not in dropped]
    index = FrameIndex.model_validate_json((frames_dir / "frames.json").read_text())
    assert [f.name for f in index.frames] == kept
    # Hard links: no copy of the frames.
    assert (frames_dir / kept[0]).stat().st_ino == (qc.job_dir / kept[0]).stat().st_ino

    kept_frames = [f for f in frames if f.index not in dropped]
    write_reconstruction(qc.job_dir, recordings["poses"], kept_frames)
    report = qc.finish()
    assert report.frames.filtered and report.frames.kept == FRAMES - len(dropped)
    assert report.frames.dropped_by_reason == {"blurry": 10, "black": 5, "duplicate": 7}
    assert report.reconstruction.frames_used == len(kept_frames)
    # Dropped frames leave holes in the frame numbers, not gaps or jumps in the camera path.
    assert report.reconstruction.gaps == [] and report.reconstruction.jumps == []
    assert not (qc.job_dir / "frames_kept").exists()
    csv_lines = (qc.job_dir / CSV_NAME).read_text().splitlines()
    assert csv_lines[0].endswith("blurry,exposure,dropped_for") and len(csv_lines) == FRAMES + 1
    assert csv_lines[BLACK[0]].endswith(",black")


def test_clean_recording_passes(recordings, tmp_path):
    qc, frames = job(recordings, "clean", tmp_path)
    write_reconstruction(qc.job_dir, recordings["poses"], frames)
    report = qc.finish()
    assert report.verdict.status == "pass", report.verdict.reasons
    assert report.frames.blurry.count == report.frames.black.count == report.frames.duplicate.count == 0
    recon = report.reconstruction
    assert recon.frames_registered == recon.frames_used == FRAMES and recon.registered_share == 1
    assert recon.trajectory_length == pytest.approx(0.9 * 5.9, rel=0.15)  # ~0.9 m/s for 5.9 s
    assert recon.colmap.mean_keypoints_per_frame == 2000 and recon.colmap.mean_track_length == 6
    assert QcReport.model_validate_json((qc.job_dir / "qc.json").read_text()) == report


def test_reconstruction_jumps_and_gaps_are_reported_with_their_frames(recordings, tmp_path):
    qc, frames = job(recordings, "clean", tmp_path)
    write_reconstruction(qc.job_dir, recordings["poses"], frames, unregistered=range(20, 27), jump_at=40)
    report = qc.finish()
    recon = report.reconstruction
    assert [j.frame for j in recon.jumps] == [40]
    assert recon.gaps == span(20, 26)
    assert recon.frames_registered == FRAMES - 7
    codes = {r.code: r for r in report.verdict.reasons}
    assert set(codes) == {"camera_jumps", "registration_gaps", "low_registration"}
    assert "frame(s) 40" in codes["camera_jumps"].message
    assert codes["registration_gaps"].message.endswith("frames 20–26")
    assert codes["low_registration"].severity == "warn"  # 88% registered
    assert codes["low_registration"].message == "only 88% of the frames used were registered (53 of 60; threshold 90%)"
    assert "trajectory.svg" in report.plots


def test_failed_reconstruction_still_writes_the_frame_report(recordings, tmp_path):
    qc, _ = job(recordings, "flawed", tmp_path)
    report = qc.finish(error="reconstruction failed: pycolmap registered only 2 of 60 frames")
    assert report.reconstruction is None
    assert report.verdict.status == "fail"
    assert report.verdict.reasons[0].code == "reconstruction_failed"
    assert report.frames.black.ranges == span(*BLACK)
    assert report.plots == ["sharpness.svg", "brightness.svg"]
    on_disk = json.loads((qc.job_dir / "qc.json").read_text())
    assert on_disk["format"] == "cosma-qc/qc@1" and on_disk["reconstruction_error"].startswith("reconstruction failed")


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.images: list[str] = []
        self.svg_titles: list[str] = []
        self.text: list[str] = []
        self._in_title = False
        self._stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self._stack.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        while self._stack and self._stack.pop() != tag:
            pass

    def handle_data(self, data):
        self.text.append(data)
        if self._stack[-2:] == ["svg", "title"]:
            self.svg_titles.append(data)


def test_html_export_is_self_contained_and_shows_the_plots(recordings, tmp_path):
    qc, frames = job(recordings, "flawed", tmp_path)
    write_reconstruction(qc.job_dir, recordings["poses"], frames, jump_at=50)
    report = qc.finish()
    html = (qc.job_dir / report.report).read_text()
    parser = _Collector()
    parser.feed(html)
    parser.close()
    assert parser.tags["svg"] == 3
    assert parser.svg_titles == ["Sharpness: var(Laplacian) / var(grey)", "Brightness: mean grey (0–255)",
                                 "Camera path, top-down"]  # fmt: skip
    assert parser.tags["polyline"] >= 2  # the two frame series
    assert len(parser.images) >= 6 and all(src.startswith("data:image/jpeg;base64,") for src in parser.images)
    text = " ".join(parser.text)
    assert "WARN" in text.upper() and "frames 41–47" in text and "jump" in text
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    for name in report.plots:  # the same plots are served on their own
        assert (qc.job_dir / name).read_text().startswith("<svg")
