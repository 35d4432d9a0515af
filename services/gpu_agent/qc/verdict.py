"""The verdict: every rule that a recording broke, as a sentence with its measure and threshold."""

from __future__ import annotations

from shared.qc import FlagSummary, FrameRange, FrameSummary, QcThresholds, Reason, ReconSummary, Verdict

#: Frame ranges spelled out in a message; the rest are counted ("+ 3 more").
MESSAGE_RANGES = 4


def spell_ranges(ranges: list[FrameRange]) -> str:
    shown = ", ".join(str(r) for r in ranges[:MESSAGE_RANGES])
    more = len(ranges) - MESSAGE_RANGES
    return shown + (f" (+ {more} more)" if more > 0 else "")


def _pct(share: float) -> str:
    return f"{share * 100:.0f}%" if share >= 0.01 or share == 0 else f"{share * 100:.1f}%"


def _share_reason(code: str, what: str, flags: FlagSummary, warn: float, fail: float) -> Reason | None:
    if flags.count == 0 or flags.share < warn:
        return None
    severity = "fail" if flags.share >= fail else "warn"
    threshold = fail if severity == "fail" else warn
    noun = "frame" if flags.count == 1 else "frames"
    message = (f"{_pct(flags.share)} of frames {what} ({flags.count} {noun}; threshold {_pct(threshold)}): "
               f"{noun} {spell_ranges(flags.ranges)}")  # fmt: skip
    return Reason(code=code, severity=severity, message=message, measured=flags.share, threshold=threshold,
                  frames=flags.ranges)  # fmt: skip


def frame_reasons(summary: FrameSummary, t: QcThresholds) -> list[Reason]:
    rules = [
        ("blurry_frames", "blurry", summary.blurry, t.blurry_warn, t.blurry_fail),
        ("black_frames", "black or near-uniform", summary.black, t.black_warn, t.black_fail),
        ("duplicate_frames", "frozen (near-duplicates of the previous frame)", summary.duplicate,
         t.duplicate_warn, t.duplicate_fail),
        ("exposure", "badly exposed (clipped dark or bright)", summary.exposure, t.exposure_warn, t.exposure_fail),
    ]  # fmt: skip
    reasons = [r for r in (_share_reason(*rule) for rule in rules) if r is not None]
    if summary.count == 0:
        reasons.append(Reason(code="no_frames", severity="fail", message="no frames were ingested"))
    return reasons


def recon_reasons(recon: ReconSummary, t: QcThresholds) -> list[Reason]:
    reasons = []
    share = recon.registered_share
    if share < t.registered_warn:
        severity = "fail" if share < t.registered_fail else "warn"
        threshold = t.registered_fail if severity == "fail" else t.registered_warn
        reasons.append(Reason(
            code="low_registration", severity=severity, measured=share, threshold=threshold,
            message=(f"only {_pct(share)} of the frames used were registered ({recon.frames_registered} of "
                     f"{recon.frames_used}; threshold {_pct(threshold)})"),
        ))  # fmt: skip
    if recon.jumps:
        worst = max(recon.jumps, key=lambda j: j.ratio)
        frames = ", ".join(str(j.frame) for j in recon.jumps[:MESSAGE_RANGES])
        more = f" (+ {len(recon.jumps) - MESSAGE_RANGES} more)" if len(recon.jumps) > MESSAGE_RANGES else ""
        reasons.append(Reason(
            code="camera_jumps", severity="warn", measured=worst.ratio, threshold=t.jump_ratio,
            frames=[FrameRange(first=j.frame, last=j.frame) for j in recon.jumps],
            message=(f"{len(recon.jumps)} sudden camera jump(s), up to {worst.ratio:.0f}× the median step "
                     f"(threshold {t.jump_ratio:g}×): drift or pose collapse at frame(s) {frames}{more}"),
        ))  # fmt: skip
    if recon.gaps:
        longest = max(g.last - g.first + 1 for g in recon.gaps)
        reasons.append(Reason(
            code="registration_gaps", severity="warn", measured=longest, threshold=t.gap_frames_warn,
            frames=recon.gaps,
            message=(f"{len(recon.gaps)} run(s) of unregistered frames, the longest {longest} frames "
                     f"(threshold {t.gap_frames_warn}): frames {spell_ranges(recon.gaps)}"),
        ))  # fmt: skip
    colmap = recon.colmap
    if colmap and colmap.mean_reprojection_error_px is not None:
        error = colmap.mean_reprojection_error_px
        if error > t.reprojection_error_warn_px:
            reasons.append(Reason(
                code="reprojection_error", severity="warn", measured=error, threshold=t.reprojection_error_warn_px,
                message=f"mean reprojection error {error:.2f} px (threshold {t.reprojection_error_warn_px:g} px)",
            ))  # fmt: skip
    if colmap and colmap.mean_keypoints_per_frame is not None and colmap.mean_keypoints_per_frame < t.keypoints_warn:
        reasons.append(Reason(
            code="few_keypoints", severity="warn", measured=colmap.mean_keypoints_per_frame,
            threshold=t.keypoints_warn,
            message=(f"{colmap.mean_keypoints_per_frame:.0f} keypoints per frame on average "
                     f"(threshold {t.keypoints_warn}): weak texture"),
        ))  # fmt: skip
    return reasons


def decide(
    frames: FrameSummary, recon: ReconSummary | None, t: QcThresholds, *, error: str | None = None
) -> Verdict:
    reasons = frame_reasons(frames, t)
    if error is not None:
        reasons.append(Reason(code="reconstruction_failed", severity="fail", message=error))
    elif recon is not None:
        reasons += recon_reasons(recon, t)
    else:
        reasons.append(Reason(code="no_reconstruction", severity="fail", message="the backend wrote no cameras.json"))
    worst = "fail" if any(r.severity == "fail" for r in reasons) else "warn" if reasons else "pass"
    return Verdict(status=worst, reasons=sorted(reasons, key=lambda r: r.severity != "fail"))
