"""``qc.json``'s schema: every model round-trips, is strict, and keeps its invariants."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from pydantic import BaseModel, ValidationError

import shared.qc as qc
from shared.jobs import JobSpec, VideoSource
from shared.qc import (
    ColmapStats, FlagSummary, FrameFilter, FrameRange, FrameSummary, Jump, QcOptions, QcReport, QcThresholds,
    Reason, ReconSummary, Stats, Verdict, VideoFacts, load_thresholds,
)  # fmt: skip


def full_report() -> QcReport:
    stats = Stats(min=0.01, p10=0.05, median=0.08, p90=0.1, max=0.12)
    flags = FlagSummary(count=2, share=2 / 60, ranges=[FrameRange(first=3, last=4)])
    return QcReport(
        job_id=7,
        created_at=datetime(2025, 5, 1, 12, 0, tzinfo=timezone.utc),
        thresholds=QcThresholds(sharpness_min=0.02),
        filter=FrameFilter(enabled=True, blurry_percentile=5),
        videos=[VideoFacts(index=0, path="a/GX010042.MP4", frames=60, first_t_s=0, last_t_s=5.9,
                           native_width=3840, native_height=2160)],  # fmt: skip
        frames=FrameSummary(count=60, width=640, height=360, sample_fps=2, sharpness=stats, brightness=stats,
                            blurry=flags, black=flags, duplicate=flags, exposure=FlagSummary(count=0, share=0),
                            filtered=True, kept=54, dropped=6, dropped_by_reason={"blurry": 2, "black": 4}),
        reconstruction=ReconSummary(
            backend="colmap", version="pycolmap 4.2.1", frames_used=54, frames_registered=50,
            registered_share=50 / 54, points=12000, confidence=stats, trajectory_length=5.3, median_step=0.1,
            jumps=[Jump(frame=31, step=2.0, ratio=20)], gaps=[FrameRange(first=40, last=43)],
            camera_extent=[4, 3, 0.5], point_extent=[6, 5, 1],
            colmap=ColmapStats(mean_reprojection_error_px=0.7, mean_track_length=5.5,
                               mean_observations_per_frame=800, keypoints=stats, mean_keypoints_per_frame=1900),
        ),  # fmt: skip
        verdict=Verdict(status="warn", reasons=[
            Reason(code="camera_jumps", severity="warn", message="1 sudden camera jump", measured=20, threshold=8,
                   frames=[FrameRange(first=31, last=31)]),
        ]),  # fmt: skip
        plots=["sharpness.svg", "brightness.svg", "trajectory.svg"],
        report="report.html",
    )


def test_full_report_round_trips():
    report = full_report()
    again = QcReport.model_validate_json(report.model_dump_json())
    assert again == report
    assert json.loads(report.model_dump_json())["format"] == "cosma-qc/qc@1"


def test_every_model_of_the_module_is_strict():
    models = [obj for obj in vars(qc).values()
              if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == "shared.qc"]  # fmt: skip
    assert len(models) == 14  # a new model must be added to full_report() too
    for model in models:
        assert model.model_config.get("extra") == "forbid", model.__name__
    data = json.loads(full_report().model_dump_json())
    data["frames"]["blurry"]["typo"] = 1
    with pytest.raises(ValidationError, match="typo"):
        QcReport.model_validate(data)


def test_verdict_status_must_follow_its_reasons():
    fail = Reason(code="reconstruction_failed", severity="fail", message="boom")
    with pytest.raises(ValidationError, match="expected 'fail'"):
        Verdict(status="warn", reasons=[fail])
    with pytest.raises(ValidationError, match="expected 'pass'"):
        Verdict(status="warn", reasons=[])
    assert Verdict(status="pass").reasons == []


def test_thresholds_are_bounded_and_ordered():
    with pytest.raises(ValidationError, match="blurry_fail must not be below blurry_warn"):
        QcThresholds(blurry_warn=0.3, blurry_fail=0.2)
    with pytest.raises(ValidationError, match="registered_fail"):
        QcThresholds(registered_warn=0.5, registered_fail=0.7)
    with pytest.raises(ValidationError):
        QcThresholds(black_warn=1.5)


def test_thresholds_file_overrides_only_what_it_names(tmp_path):
    path = tmp_path / "qc.json"
    path.write_text(json.dumps({"sharpness_min": 0.05, "jump_ratio": 12}))
    thresholds = load_thresholds(path)
    assert thresholds.sharpness_min == 0.05 and thresholds.jump_ratio == 12
    assert thresholds.blurry_warn == QcThresholds().blurry_warn
    path.write_text(json.dumps({"sharpnes_min": 0.05}))
    with pytest.raises(ValueError, match="sharpnes_min: Extra inputs are not permitted"):
        load_thresholds(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        load_thresholds(path)
    with pytest.raises(ValueError, match="cannot read"):
        load_thresholds(tmp_path / "missing.json")


def test_job_spec_qc_options_are_optional_and_round_trip():
    base = {"job_id": 3, "videos": [VideoSource(storage_url="http://s", path="a.MP4").model_dump()]}
    assert JobSpec.model_validate(base).qc is None  # older cores send no qc field
    spec = JobSpec.model_validate({**base, "qc": {"filter": {"blurry_percentile": 10},
                                                  "thresholds": {"blurry_warn": 0.2}}})  # fmt: skip
    assert spec.qc == QcOptions(filter=FrameFilter(blurry_percentile=10), thresholds=QcThresholds(blurry_warn=0.2))
    assert JobSpec.model_validate_json(spec.model_dump_json()) == spec
