"""Frame QC: metrics measured as each frame lands, then judged over the whole recording.

:class:`FrameQc` runs inside the ingest thread: every frame is measured once, right after it
is written, and appended to ``frames_qc.csv`` (so a restarted job re-reads the CSV rather
than the frames). Black and near-duplicate frames are decided on the spot; blur needs the
frames on both sides (the neighbour rule), so :func:`judge` runs when ingest is over and
rewrites the CSV with the verdict columns.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from shared.frames import IndexedFrame
from shared.qc import FlagSummary, FrameFilter, FrameRange, QcThresholds

from services.gpu_agent.ingest import atomic_write_bytes
from services.gpu_agent.qc import metrics

log = logging.getLogger(__name__)

CSV_NAME = "frames_qc.csv"


@dataclass
class FrameRow:
    frame: int
    name: str
    video: int
    t_s: float
    width: int
    height: int
    sharpness: float
    brightness: float
    contrast: float
    dark_share: float
    bright_share: float
    diff_prev: float | None  # to the previous kept frame; None for the first or after black
    black: bool
    duplicate: bool
    # Decided by judge() over the whole recording:
    blurry: bool = False
    exposure: bool = False
    dropped_for: str = ""


_COLUMNS = [f.name for f in fields(FrameRow)]
_RAW_COLUMNS = _COLUMNS[: _COLUMNS.index("duplicate") + 1]


def _format(row: FrameRow, columns: list[str]) -> list[str]:
    values = asdict(row)
    out = []
    for name in columns:
        value = values[name]
        if isinstance(value, bool):
            out.append("1" if value else "0")
        elif isinstance(value, float):
            out.append(f"{value:.6g}")
        else:
            out.append("" if value is None else str(value))
    return out


def _parse(record: dict[str, str]) -> FrameRow:
    def number(key: str) -> float:
        return float(record[key])

    return FrameRow(
        frame=int(record["frame"]), name=record["name"], video=int(record["video"]), t_s=number("t_s"),
        width=int(record["width"]), height=int(record["height"]), sharpness=number("sharpness"),
        brightness=number("brightness"), contrast=number("contrast"), dark_share=number("dark_share"),
        bright_share=number("bright_share"), diff_prev=float(record["diff_prev"]) if record["diff_prev"] else None,
        black=record["black"] == "1", duplicate=record["duplicate"] == "1",
    )  # fmt: skip


class FrameQc:
    """Measures frames as they arrive; thread-safe (``observe`` runs in the ingest thread)."""

    def __init__(self, job_dir: Path, thresholds: QcThresholds):
        self.csv_path = Path(job_dir) / CSV_NAME
        self.thresholds = thresholds
        self._lock = threading.Lock()
        self._rows: dict[int, FrameRow] = {}
        self._reference: np.ndarray | None = None  # thumbnail of the last kept frame

    def resume(self, frames: list[IndexedFrame]) -> None:
        """Keep the measured rows of ``frames`` (frames already on disk), forget the rest."""
        known = {f.index: f.name for f in frames}
        rows: dict[int, FrameRow] = {}
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as fh:
                for record in csv.DictReader(fh):
                    try:
                        row = _parse(record)
                    except (KeyError, TypeError, ValueError):
                        continue  # a line cut short by a crash: that frame is measured again
                    if known.get(row.frame) == row.name:
                        rows[row.frame] = row
        with self._lock:
            self._rows = rows
            self._reference = None
            self._rewrite(list(rows.values()), _RAW_COLUMNS)
            last = next((r for r in sorted(rows.values(), key=lambda r: -r.frame)
                         if not r.black and not r.duplicate), None)  # fmt: skip
        if last is not None:
            path = self.csv_path.parent / last.name
            if path.exists():
                _, thumb = metrics.analyse(path)
                with self._lock:
                    self._reference = thumb

    def observe(self, frame: IndexedFrame, path: Path) -> FrameRow:
        """Measure one frame just written to ``path`` and append its row to the CSV."""
        try:
            m, thumb = metrics.analyse(path)
            size = (m.width, m.height)
        except (OSError, ValueError) as exc:
            log.warning("QC cannot read %s (%s): counted as a black frame", path.name, exc)
            m, thumb, size = None, None, (0, 0)
        t = self.thresholds
        with self._lock:
            black = m is None or m.brightness < t.black_brightness_max or m.contrast < t.uniform_contrast_max
            diff = None
            if not black and self._reference is not None:
                diff = metrics.difference(thumb, self._reference)
            # Relative to the frame's contrast: codec noise on a frozen frame scales with its detail.
            duplicate = diff is not None and diff < t.duplicate_diff_max * m.contrast
            if not black and not duplicate:
                self._reference = thumb
            row = FrameRow(
                frame=frame.index, name=frame.name, video=frame.video, t_s=frame.t_s, width=size[0], height=size[1],
                sharpness=m.sharpness if m else 0.0, brightness=m.brightness if m else 0.0,
                contrast=m.contrast if m else 0.0, dark_share=m.dark_share if m else 0.0,
                bright_share=m.bright_share if m else 0.0, diff_prev=diff, black=black, duplicate=duplicate,
            )  # fmt: skip
            self._rows[frame.index] = row
            self._append(row)
        return row

    def rows(self) -> list[FrameRow]:
        with self._lock:
            return [FrameRow(**asdict(r)) for r in sorted(self._rows.values(), key=lambda r: r.frame)]

    def write_judged(self, rows: list[FrameRow]) -> None:
        """Rewrite the CSV with the verdict columns (after :func:`judge`)."""
        with self._lock:
            self._rewrite(rows, _COLUMNS)

    def _append(self, row: FrameRow) -> None:
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(_RAW_COLUMNS)
            writer.writerow(_format(row, _RAW_COLUMNS))

    def _rewrite(self, rows: list[FrameRow], columns: list[str]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        for row in sorted(rows, key=lambda r: r.frame):
            writer.writerow(_format(row, columns))
        atomic_write_bytes(self.csv_path, buffer.getvalue().encode())


def judge(rows: list[FrameRow], thresholds: QcThresholds, frame_filter: FrameFilter) -> list[FrameRow]:
    """Decide blur, exposure and what to drop, in place; ``rows`` in frame order."""
    t = thresholds
    sharp = np.array([r.sharpness for r in rows], dtype=np.float64)
    valid = np.array([not r.black for r in rows])
    for i, row in enumerate(rows):
        row.blurry = row.exposure = False
        row.dropped_for = ""
        if row.black:
            continue
        lo, hi = max(0, i - t.neighbour_window), min(len(rows), i + t.neighbour_window + 1)
        neighbours = [sharp[j] for j in range(lo, hi) if j != i and valid[j]]
        relative = len(neighbours) >= 2 and row.sharpness < t.neighbour_ratio * float(np.median(neighbours))
        row.blurry = row.sharpness < t.sharpness_min or relative
        row.exposure = max(row.dark_share, row.bright_share) > t.clipped_share_max

    cutoff = None
    if frame_filter.enabled and frame_filter.blurry_percentile and valid.any():
        cutoff = float(np.percentile(sharp[valid], frame_filter.blurry_percentile))
    if frame_filter.enabled:
        for row in rows:
            if row.black and frame_filter.black:
                row.dropped_for = "black"
            elif row.duplicate and frame_filter.duplicates:
                row.dropped_for = "duplicate"
            elif row.blurry and frame_filter.blurry:
                row.dropped_for = "blurry"
            elif cutoff is not None and not row.black and row.sharpness < cutoff:
                row.dropped_for = "blurry_percentile"
    return rows


def ranges(frames: list[int]) -> list[FrameRange]:
    """Runs of consecutive frame numbers: [3, 4, 5, 9] -> 3–5, 9."""
    out: list[FrameRange] = []
    for frame in sorted(frames):
        if out and frame == out[-1].last + 1:
            out[-1].last = frame
        else:
            out.append(FrameRange(first=frame, last=frame))
    return out


def flag_summary(rows: list[FrameRow], flag: str) -> FlagSummary:
    flagged = [r.frame for r in rows if getattr(r, flag)]
    return FlagSummary(count=len(flagged), share=len(flagged) / len(rows) if rows else 0.0, ranges=ranges(flagged))
