"""QC plots as small hand-written SVG documents (no plotting library on the agents).

Each function returns an SVG string: a frame-series chart with thresholds drawn and flagged
stretches shaded, or a top-down view of the camera path with jumps and gaps marked.
"""

from __future__ import annotations

import math
from html import escape

import numpy as np

from shared.qc import FrameRange, Jump, QcThresholds

from services.gpu_agent.qc.frames import FrameRow, ranges

WIDTH, HEIGHT = 820, 260
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 56, 16, 30, 36
#: Shading of flagged stretches, shared by both series charts and the report's legend.
FLAG_COLOURS = {"blurry": "#e4572e", "black": "#555555", "duplicate": "#3b7dd8", "exposure": "#f0a202"}


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + k * step, 10) for k in range(int((hi - first) / step) + 1)]


def _fmt(value: float) -> str:
    return f"{value:g}" if abs(value) >= 0.01 or value == 0 else f"{value:.1e}"


def _svg(body: list[str], title: str, width: int = WIDTH, height: int = HEIGHT) -> str:
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'
            f"<title>{escape(title)}</title>"
            f'<rect width="{width}" height="{height}" fill="#ffffff"/>'
            f'<text x="{MARGIN_L}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>')  # fmt: skip
    return head + "".join(body) + "</svg>\n"


def series_chart(
    title: str,
    frames: list[int],
    values: list[float],
    *,
    y_max: float | None = None,
    lines: list[tuple[float, str, str]] = (),
    shaded: dict[str, list[FrameRange]] | None = None,
    y_label: str = "",
) -> str:
    """A line over frame numbers; ``lines`` are (value, label, colour); ``shaded`` by flag name."""
    if not frames:
        return _svg([f'<text x="{MARGIN_L}" y="60">no frames</text>'], title)
    x0, x1 = min(frames), max(max(frames), min(frames) + 1)
    finite = [v for v in values if math.isfinite(v)]
    top = y_max if y_max is not None else max([*finite, *(v for v, _, _ in lines), 1e-9]) * 1.08
    plot_w, plot_h = WIDTH - MARGIN_L - MARGIN_R, HEIGHT - MARGIN_T - MARGIN_B

    def sx(frame: float) -> float:
        return MARGIN_L + (frame - x0) / (x1 - x0) * plot_w

    def sy(value: float) -> float:
        return MARGIN_T + plot_h - min(max(value, 0.0), top) / top * plot_h

    half = plot_w / (x1 - x0 + 1) / 2
    body = []
    for flag, runs in (shaded or {}).items():
        colour = FLAG_COLOURS.get(flag, "#999999")
        for r in runs:
            left, right = sx(r.first) - half, sx(r.last) + half
            body.append(f'<rect x="{left:.1f}" y="{MARGIN_T}" width="{max(right - left, 1):.1f}" height="{plot_h}" '
                        f'fill="{colour}" fill-opacity="0.22"><title>{flag}: frames {r}</title></rect>')  # fmt: skip
    for tick in _nice_ticks(0, top):
        y = sy(tick)
        body.append(f'<line x1="{MARGIN_L}" x2="{WIDTH - MARGIN_R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eeeeee"/>'
                    f'<text x="{MARGIN_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>')  # fmt: skip
    for tick in _nice_ticks(x0, x1, 8):
        if float(tick).is_integer():
            x = sx(tick)
            body.append(f'<text x="{x:.1f}" y="{HEIGHT - MARGIN_B + 16}" text-anchor="middle">{int(tick)}</text>')
    body.append(f'<text x="{MARGIN_L + plot_w / 2:.0f}" y="{HEIGHT - 4}" text-anchor="middle">frame</text>')
    if y_label:
        body.append(f'<text x="12" y="{MARGIN_T + plot_h / 2:.0f}" transform="rotate(-90 12 {MARGIN_T + plot_h / 2:.0f})"'
                    f' text-anchor="middle">{escape(y_label)}</text>')  # fmt: skip
    body.append(f'<rect x="{MARGIN_L}" y="{MARGIN_T}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>')
    points = " ".join(f"{sx(f):.1f},{sy(v):.1f}" for f, v in zip(frames, values) if math.isfinite(v))
    body.append(f'<polyline points="{points}" fill="none" stroke="#1b1b1b" stroke-width="1.4"/>')
    if len(frames) <= 400:
        body += [f'<circle cx="{sx(f):.1f}" cy="{sy(v):.1f}" r="1.8" fill="#1b1b1b"/>'
                 for f, v in zip(frames, values) if math.isfinite(v)]  # fmt: skip
    for value, label, colour in lines:
        y = sy(value)
        body.append(f'<line x1="{MARGIN_L}" x2="{WIDTH - MARGIN_R}" y1="{y:.1f}" y2="{y:.1f}" stroke="{colour}" '
                    f'stroke-dasharray="6 4" stroke-width="1.2"/>'
                    f'<text x="{WIDTH - MARGIN_R - 4}" y="{y - 4:.1f}" text-anchor="end" fill="{colour}">'
                    f"{escape(label)}</text>")  # fmt: skip
    legend_x = WIDTH - MARGIN_R
    for flag in reversed(list((shaded or {}).keys())):
        legend_x -= 80
        body.append(f'<rect x="{legend_x}" y="8" width="12" height="12" fill="{FLAG_COLOURS.get(flag, "#999")}" '
                    f'fill-opacity="0.35"/><text x="{legend_x + 16}" y="18">{flag}</text>')  # fmt: skip
    return _svg(body, title)


def sharpness_chart(rows: list[FrameRow], t: QcThresholds) -> str:
    frames = [r.frame for r in rows]
    values = [r.sharpness for r in rows]
    valid = [r.sharpness for r in rows if not r.black]
    top = max(float(np.percentile(valid, 99)) * 1.15, t.sharpness_min * 1.5) if valid else 1.0
    shaded = {flag: ranges([r.frame for r in rows if getattr(r, flag)]) for flag in ("blurry", "black", "duplicate")}
    return series_chart("Sharpness: var(Laplacian) / var(grey)", frames, values, y_max=top,
                        lines=[(t.sharpness_min, f"blurry below {t.sharpness_min:g}", "#e4572e")],
                        shaded=shaded, y_label="sharpness")  # fmt: skip


def brightness_chart(rows: list[FrameRow], t: QcThresholds) -> str:
    frames = [r.frame for r in rows]
    shaded = {flag: ranges([r.frame for r in rows if getattr(r, flag)]) for flag in ("black", "exposure")}
    return series_chart("Brightness: mean grey (0–255)", frames, [r.brightness for r in rows], y_max=255,
                        lines=[(t.black_brightness_max, f"black below {t.black_brightness_max:g}", "#555555")],
                        shaded=shaded, y_label="mean grey")  # fmt: skip


def trajectory_chart(
    frames: np.ndarray, centres: np.ndarray, jumps: list[Jump], gaps: list[FrameRange], *, size: int = 520
) -> str:
    """Camera centres seen from above: projected on their two main axes (PCA)."""
    title = "Camera path, top-down"
    if len(centres) < 2:
        return _svg([f'<text x="{MARGIN_L}" y="60">fewer than two registered cameras</text>'], title, size, 120)
    centred = centres - centres.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = max(float((hi - lo).max()), 1e-12)
    pad = 40
    scale = (size - 2 * pad) / span

    # Centre the path: the shorter axis gets equal margins on both sides.
    off_x, off_y = ((size - 2 * pad) - (hi - lo) * scale) / 2

    def pt(p) -> tuple[float, float]:
        return pad + off_x + (p[0] - lo[0]) * scale, size - pad - off_y - (p[1] - lo[1]) * scale

    def label(x: float, y: float, text: str, colour: str = "#1b1b1b") -> str:
        # Labels point inwards so that none runs off the picture.
        anchor, dx = ("end", -9) if x > size / 2 else ("start", 9)
        return (f'<text x="{x + dx:.1f}" y="{y - 6:.1f}" text-anchor="{anchor}" fill="{colour}">'
                f"{escape(text)}</text>")

    body = [f'<rect x="{pad / 2}" y="{pad / 2 + 8}" width="{size - pad}" height="{size - pad - 8}" fill="none" '
            f'stroke="#dddddd"/>']  # fmt: skip
    jump_frames = {j.frame for j in jumps}
    for k in range(1, len(frames)):
        (xa, ya), (xb, yb) = pt(xy[k - 1]), pt(xy[k])
        across_gap = any(frames[k - 1] < g.first and frames[k] > g.last for g in gaps)
        style = ('stroke="#e4572e" stroke-dasharray="4 3"' if across_gap
                 else 'stroke="#e4572e"' if int(frames[k]) in jump_frames else 'stroke="#1b6ca8"')  # fmt: skip
        body.append(f'<line x1="{xa:.1f}" y1="{ya:.1f}" x2="{xb:.1f}" y2="{yb:.1f}" {style} stroke-width="1.6"/>')
    for k, frame in enumerate(frames):
        x, y = pt(xy[k])
        if int(frame) in jump_frames:
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="7" fill="none" stroke="#e4572e" stroke-width="2">'
                        f"<title>jump at frame {int(frame)}</title></circle>"
                        + label(x, y, f"jump {int(frame)}", "#e4572e"))  # fmt: skip
    (sx0, sy0), (sx1, sy1) = pt(xy[0]), pt(xy[-1])
    body.append(f'<circle cx="{sx0:.1f}" cy="{sy0:.1f}" r="5" fill="#2a9d3f"/>'
                + label(sx0, sy0, f"start ({int(frames[0])})")
                + f'<rect x="{sx1 - 5:.1f}" y="{sy1 - 5:.1f}" width="10" height="10" fill="#1b1b1b"/>'
                + label(sx1, sy1, f"end ({int(frames[-1])})"))  # fmt: skip
    note = f"{len(jumps)} jump(s), {len(gaps)} gap(s) (dashed red)"
    body.append(f'<text x="{pad / 2}" y="{size - 6}" fill="#555">{escape(note)}</text>')
    return _svg(body, title, size, size)
