"""``report.html``: one self-contained page per job that can be mailed.

The plots are inlined as SVG and the contact sheet's frames as JPEG data URIs, so the file
needs nothing beside it. Every value that came from outside (paths, messages) is escaped.
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path

from PIL import Image

from shared.qc import QcReport

from services.gpu_agent.qc.frames import FrameRow, ranges
from services.gpu_agent.qc.plots import FLAG_COLOURS

REPORT_NAME = "report.html"
#: Contact sheet: thumbnail width (px), JPEG quality, and how many worst / typical frames.
THUMB_WIDTH = 240
THUMB_QUALITY = 70
WORST_FRAMES = 8
TYPICAL_FRAMES = 4

_STATUS_COLOURS = {"pass": "#2a9d3f", "warn": "#f0a202", "fail": "#d1342f"}
_CSS = """
body{font-family:sans-serif;margin:24px;color:#1b1b1b;max-width:1100px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.badge{display:inline-block;padding:4px 14px;border-radius:4px;color:#fff;font-weight:bold;text-transform:uppercase}
.sheet{display:flex;flex-wrap:wrap;gap:10px}.sheet figure{margin:0;font-size:12px;width:%dpx}
.sheet img{width:100%%;display:block;border:3px solid #ddd}li{margin:4px 0}
""" % THUMB_WIDTH


def pick_frames(rows: list[FrameRow]) -> tuple[list[FrameRow], list[FrameRow]]:
    """The worst frames (the middle of each flagged stretch, then the least sharp) and typical ones."""
    by_frame = {r.frame: r for r in rows}
    worst: list[FrameRow] = []
    for flag in ("blurry", "black", "duplicate", "exposure"):
        for run in ranges([r.frame for r in rows if getattr(r, flag)]):
            middle = by_frame[(run.first + run.last) // 2]
            if middle not in worst:
                worst.append(middle)
    if len(worst) < WORST_FRAMES:
        rest = sorted((r for r in rows if not r.black and r not in worst), key=lambda r: r.sharpness)
        worst += rest[: max(0, min(WORST_FRAMES, 4) - len(worst))]
    worst = sorted(worst[:WORST_FRAMES], key=lambda r: r.frame)
    clean = [r for r in rows if not (r.blurry or r.black or r.duplicate or r.exposure)]
    step = max(1, len(clean) // TYPICAL_FRAMES)
    typical = clean[step // 2 :: step][:TYPICAL_FRAMES]
    return worst, typical


def data_uri(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            image.draft("RGB", (THUMB_WIDTH, THUMB_WIDTH))
            image = image.convert("RGB")
            image.thumbnail((THUMB_WIDTH, THUMB_WIDTH * 4))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=THUMB_QUALITY)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(job_dir: Path, row: FrameRow) -> str:
    flags = [f for f in ("blurry", "black", "duplicate", "exposure") if getattr(row, f)]
    colour = FLAG_COLOURS[flags[0]] if flags else "#dddddd"
    uri = data_uri(job_dir / row.name)
    image = (f'<img src="{uri}" alt="frame {row.frame}" style="border-color:{colour}">' if uri
             else f"<p>(frame {row.frame} is not readable)</p>")  # fmt: skip
    caption = f"frame {row.frame} · sharpness {row.sharpness:.3g} · grey {row.brightness:.0f}"
    if flags:
        caption += " · " + ", ".join(flags)
    if row.dropped_for:
        caption += " · dropped"
    return f"<figure>{image}<figcaption>{escape(caption)}</figcaption></figure>"


def _table(pairs: list[tuple[str, object]]) -> str:
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in pairs)
    return f"<table>{cells}</table>"


def _inline_svg(job_dir: Path, name: str) -> str:
    text = (job_dir / name).read_text()
    return f'<div class="plot" id="{escape(name)}">{text}</div>'


def render_html(report: QcReport, job_dir: Path, rows: list[FrameRow]) -> str:
    job_dir = Path(job_dir)
    v = report.verdict
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>QC report, job {report.job_id}</title><style>{_CSS}</style></head><body>",
             f"<h1>QC report, job {report.job_id} "
             f"<span class='badge' style='background:{_STATUS_COLOURS[v.status]}'>{v.status}</span></h1>",
             f"<p>Written {escape(report.created_at.isoformat(timespec='seconds'))}.</p>"]  # fmt: skip
    parts.append("<h2>Verdict</h2>")
    if v.reasons:
        items = "".join(f"<li><b>{escape(r.severity)}</b> <code>{escape(r.code)}</code>: {escape(r.message)}</li>"
                        for r in v.reasons)  # fmt: skip
        parts.append(f"<ul>{items}</ul>")
    else:
        parts.append("<p>Every check passed.</p>")

    parts.append("<h2>Videos</h2>")
    rows_html = "".join(
        f"<tr><td>{x.index}</td><td>{escape(x.path)}</td><td>{x.frames}</td>"
        f"<td>{'' if x.first_t_s is None else f'{x.first_t_s:.1f}–{x.last_t_s:.1f} s'}</td>"
        f"<td>{f'{x.native_width}×{x.native_height}' if x.native_width else ''}</td></tr>"
        for x in report.videos
    )
    parts.append("<table><tr><th>#</th><th>path</th><th>frames</th><th>time span</th><th>native size</th></tr>"
                 f"{rows_html}</table>")  # fmt: skip

    f = report.frames
    parts.append("<h2>Frames</h2>")
    parts.append(_table([
        ("frames", f.count), ("frame size", f"{f.width}×{f.height}" if f.width else "?"),
        ("sampled at", f"{f.sample_fps:g} fps" if f.sample_fps else "?"),
        ("sharpness (median)", f"{f.sharpness.median:.3g}" if f.sharpness else "–"),
        ("brightness (median)", f"{f.brightness.median:.0f}" if f.brightness else "–"),
        ("blurry", f"{f.blurry.count} ({f.blurry.share:.0%})"), ("black or near-uniform", f"{f.black.count}"),
        ("frozen (duplicates)", f"{f.duplicate.count}"), ("badly exposed", f"{f.exposure.count}"),
        ("filtered before reconstruction", "yes" if f.filtered else "no"),
        ("kept / dropped", f"{f.kept} / {f.dropped}"),
        ("dropped by reason", ", ".join(f"{k}: {n}" for k, n in f.dropped_by_reason.items()) or "–"),
    ]))  # fmt: skip
    for name in report.plots:
        if name != "trajectory.svg":
            parts.append(_inline_svg(job_dir, name))

    parts.append("<h2>Reconstruction</h2>")
    r = report.reconstruction
    if r is None:
        parts.append(f"<p>No reconstruction: {escape(report.reconstruction_error or 'not run')}</p>")
    else:
        pairs = [
            ("backend", f"{r.backend} ({r.version})"), ("frames registered", f"{r.frames_registered} of {r.frames_used}"),
            ("points", r.points), ("trajectory length", f"{r.trajectory_length:.3g} (model units)"),
            ("camera jumps", ", ".join(f"frame {j.frame} ({j.ratio:.0f}×)" for j in r.jumps) or "none"),
            ("gaps", ", ".join(str(g) for g in r.gaps) or "none"),
            ("camera extent", " × ".join(f"{x:.3g}" for x in r.camera_extent)),
            ("point extent (2–98%)", " × ".join(f"{x:.3g}" for x in r.point_extent)),
        ]  # fmt: skip
        if r.confidence:
            pairs.append(("confidence (median)", f"{r.confidence.median:.3g}"))
        if r.colmap:
            c = r.colmap
            pairs += [
                ("mean reprojection error", "–" if c.mean_reprojection_error_px is None
                 else f"{c.mean_reprojection_error_px:.2f} px"),
                ("mean track length", "–" if c.mean_track_length is None else f"{c.mean_track_length:.1f}"),
                ("keypoints per frame", "–" if c.mean_keypoints_per_frame is None
                 else f"{c.mean_keypoints_per_frame:.0f} (min {c.keypoints.min:.0f})"),
            ]  # fmt: skip
        parts.append(_table(pairs))
    if "trajectory.svg" in report.plots:
        parts.append(_inline_svg(job_dir, "trajectory.svg"))

    worst, typical = pick_frames(rows)
    parts.append("<h2>Contact sheet</h2><h3>Worst frames</h3><div class='sheet'>"
                 + "".join(_figure(job_dir, row) for row in worst) + "</div>"
                 "<h3>Typical frames</h3><div class='sheet'>"
                 + "".join(_figure(job_dir, row) for row in typical) + "</div>")  # fmt: skip

    t = report.thresholds.model_dump()
    parts.append("<h2>Thresholds</h2>" + _table(list(t.items())))
    parts.append("</body></html>\n")
    return "".join(parts)
