"""QC of one job, in the order the job manager needs it.

1. :meth:`JobQc.resume` and :meth:`JobQc.observe` while frames are ingested;
2. :meth:`JobQc.frames_for_backend` before the reconstruction: the folder the backend must
   read. With filtering on, that is ``frames_kept/``, hard links to the kept frames plus a
   ``frames.json`` listing only them, so any backend sees only kept frames unchanged;
3. :meth:`JobQc.finish` afterwards (also when the reconstruction failed): ``qc.json``, the
   SVG plots, the judged ``frames_qc.csv`` and ``report.html``.
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from shared.cameras import CAMERAS_NAME
from shared.frames import FRAMES_INDEX_NAME, FrameIndex, IndexedFrame
from shared.jobs import JobSpec
from shared.qc import (
    QC_NAME, FrameFilter, FrameSummary, QcReport, QcThresholds, ReconSummary, VideoFacts, load_thresholds,
)  # fmt: skip

from services.gpu_agent.backends.colmap_stats import COLMAP_STATS_NAME
from services.gpu_agent.ingest import atomic_write_bytes
from services.gpu_agent.qc import plots, recon
from services.gpu_agent.qc.frames import CSV_NAME, FrameQc, FrameRow, flag_summary, judge
from services.gpu_agent.qc.recon import stats, summarise_reconstruction, trajectory
from services.gpu_agent.qc.report import REPORT_NAME, render_html
from services.gpu_agent.qc.verdict import decide

log = logging.getLogger(__name__)

KEPT_DIR = "frames_kept"
PLOT_NAMES = ("sharpness.svg", "brightness.svg", "trajectory.svg")
#: Files this module writes; removed before a new reconstruction so none is stale.
QC_OUTPUTS = (QC_NAME, REPORT_NAME, COLMAP_STATS_NAME, *PLOT_NAMES)


def resolve_options(spec: JobSpec, settings) -> tuple[QcThresholds, FrameFilter]:
    """The job's own QC options first, then the agent's settings, then the defaults."""
    options = getattr(spec, "qc", None)
    thresholds = options.thresholds if options and options.thresholds else None
    if thresholds is None:
        path = getattr(settings, "qc_thresholds_file", None)
        thresholds = load_thresholds(path) if path else QcThresholds()
    frame_filter = options.filter if options and options.filter else None
    if frame_filter is None:
        frame_filter = FrameFilter(enabled=bool(getattr(settings, "qc_filter_frames", False)))
    return thresholds, frame_filter


class JobQc:
    def __init__(self, job_id: int, job_dir: Path, spec: JobSpec, *, thresholds: QcThresholds,
                 frame_filter: FrameFilter):  # fmt: skip
        self.job_id = job_id
        self.job_dir = Path(job_dir)
        self.spec = spec
        self.thresholds = thresholds
        self.filter = frame_filter
        self.frame_qc = FrameQc(self.job_dir, thresholds)

    @classmethod
    def for_job(cls, job_id: int, job_dir: Path, spec: JobSpec, settings) -> "JobQc":
        thresholds, frame_filter = resolve_options(spec, settings)
        return cls(job_id, job_dir, spec, thresholds=thresholds, frame_filter=frame_filter)

    # -- during ingest -----------------------------------------------------------------

    def resume(self, frames: list[IndexedFrame]) -> None:
        """Keep the rows of frames already ingested (a restarted job does not measure them again)."""
        self.frame_qc.resume(frames)

    def observe(self, frame: IndexedFrame, path: Path) -> None:
        """Measure one frame as it lands; a QC error is logged, never fatal to the ingest."""
        try:
            self.frame_qc.observe(frame, path)
        except Exception:  # noqa: BLE001 - QC must not cost the job its frames
            log.exception("job %s: QC of %s failed", self.job_id, frame.name)

    # -- before and after the reconstruction ----------------------------------------------

    def judged_rows(self) -> list[FrameRow]:
        """Every ingested frame's row, judged; frames without a row are measured now."""
        index = self._index()
        have = {r.frame for r in self.frame_qc.rows()}
        for frame in index.frames:
            if frame.index not in have and (self.job_dir / frame.name).exists():
                self.frame_qc.observe(frame, self.job_dir / frame.name)
        known = {f.index for f in index.frames}
        rows = [r for r in self.frame_qc.rows() if r.frame in known]
        judge(rows, self.thresholds, self.filter)
        self.frame_qc.write_judged(rows)
        return rows

    def frames_for_backend(self) -> Path:
        """The folder the backend must read: the job folder, or ``frames_kept/`` when filtering."""
        for name in QC_OUTPUTS:
            (self.job_dir / name).unlink(missing_ok=True)
        kept_dir = self.job_dir / KEPT_DIR
        shutil.rmtree(kept_dir, ignore_errors=True)
        rows = self.judged_rows()
        dropped = {r.name for r in rows if r.dropped_for}
        if not self.filter.enabled or not dropped:
            return self.job_dir
        index = self._index()
        kept = [f for f in index.frames if f.name not in dropped]
        kept_dir.mkdir()
        for frame in kept:
            _link(self.job_dir / frame.name, kept_dir / frame.name)
        filtered = FrameIndex(videos=index.videos, frames=kept)
        atomic_write_bytes(kept_dir / FRAMES_INDEX_NAME, filtered.model_dump_json(indent=1).encode())
        log.info("job %s: %d of %d frames kept for the reconstruction", self.job_id, len(kept), len(index.frames))
        return kept_dir

    def finish(self, *, error: str | None = None) -> QcReport:
        """Write ``qc.json``, the plots and ``report.html``; ``error`` when the reconstruction failed."""
        shutil.rmtree(self.job_dir / KEPT_DIR, ignore_errors=True)
        rows = self.judged_rows()
        summary = self.frame_summary(rows)
        recon_summary: ReconSummary | None = None
        if error is None and (self.job_dir / CAMERAS_NAME).exists():
            try:
                recon_summary = summarise_reconstruction(self.job_dir, self.thresholds)
            except (OSError, ValueError) as exc:
                error = f"the reconstruction's outputs are unreadable: {exc}"
        report = QcReport(
            job_id=self.job_id,
            created_at=datetime.now(timezone.utc),
            thresholds=self.thresholds,
            filter=self.filter,
            videos=self._videos(rows),
            frames=summary,
            reconstruction=recon_summary,
            reconstruction_error=error,
            verdict=decide(summary, recon_summary, self.thresholds, error=error),
            plots=self._write_plots(rows, recon_summary),
            report=REPORT_NAME,
        )
        atomic_write_bytes(self.job_dir / QC_NAME, report.model_dump_json(indent=1).encode())
        html = render_html(report, self.job_dir, rows)
        atomic_write_bytes(self.job_dir / REPORT_NAME, html.encode())
        return report

    # -- pieces ------------------------------------------------------------------------

    def frame_summary(self, rows: list[FrameRow]) -> FrameSummary:
        dropped: dict[str, int] = {}
        for row in rows:
            if row.dropped_for:
                dropped[row.dropped_for] = dropped.get(row.dropped_for, 0) + 1
        valid = [r for r in rows if not r.black]
        first = next((r for r in rows if r.width), None)
        return FrameSummary(
            count=len(rows),
            width=first.width if first else None,
            height=first.height if first else None,
            sample_fps=self.spec.extract.fps,
            sharpness=stats([r.sharpness for r in valid]),
            brightness=stats([r.brightness for r in rows]),
            blurry=flag_summary(rows, "blurry"),
            black=flag_summary(rows, "black"),
            duplicate=flag_summary(rows, "duplicate"),
            exposure=flag_summary(rows, "exposure"),
            filtered=self.filter.enabled,
            kept=len(rows) - sum(dropped.values()),
            dropped=sum(dropped.values()),
            dropped_by_reason=dropped,
            csv=CSV_NAME,
        )

    def _index(self) -> FrameIndex:
        path = self.job_dir / FRAMES_INDEX_NAME
        return FrameIndex.model_validate_json(path.read_bytes()) if path.exists() else FrameIndex()

    def _videos(self, rows: list[FrameRow]) -> list[VideoFacts]:
        index = self._index()
        facts = []
        for video in index.videos:
            times = [r.t_s for r in rows if r.video == video.index]
            facts.append(VideoFacts(
                index=video.index, path=video.path, frames=len(times),
                first_t_s=min(times) if times else None, last_t_s=max(times) if times else None,
                native_width=video.native_width, native_height=video.native_height,
            ))  # fmt: skip
        return facts

    def _write_plots(self, rows: list[FrameRow], recon_summary: ReconSummary | None) -> list[str]:
        charts = {"sharpness.svg": plots.sharpness_chart(rows, self.thresholds),
                  "brightness.svg": plots.brightness_chart(rows, self.thresholds)}  # fmt: skip
        if recon_summary is not None:
            frames, centres = trajectory(recon.read_cameras(self.job_dir / CAMERAS_NAME))
            charts["trajectory.svg"] = plots.trajectory_chart(frames, centres, recon_summary.jumps, recon_summary.gaps)
        for name, svg in charts.items():
            atomic_write_bytes(self.job_dir / name, svg.encode())
        return list(charts)


def _link(source: Path, target: Path) -> None:
    """A hard link (free, same file system); a copy where links are not supported."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
