"""HTML and SVG helpers for the self-contained pages pretrainlab writes (reports, sweeps, comparisons).

No scripts, no web fonts, no CDN: charts are inline SVG generated here and the
stylesheet is a small inline string, so every page opens offline. Imports
nothing from pretrainlab: any layer may use it.
"""

from __future__ import annotations

import html
import math
from typing import Any

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]
MAX_POINTS = 2000  # per series; longer series are thinned (every k-th point, last kept)

# --------------------------------------------------------------------------- formatting


def fmt_num(v: Any, digits: int = 4) -> str:
    """Compact human number: 1.23k, 4.5M, 3.2e-05, 0.125."""
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    a = abs(v)
    if isinstance(v, int) and a < 100_000:
        return f"{v:,}"
    for div, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div and a >= 1e4:
            text = f"{v / div:.{max(digits - 1, 2)}g}"
            return f"{v / div:.0f}{suffix}" if "e" in text else f"{text}{suffix}"  # 500k, never 5e+02k
    if a != 0 and a < 1e-3:
        return f"{v:.2e}"
    return f"{v:.{digits}g}"


def esc(x: Any) -> str:
    """Text as HTML (quotes escaped too, so it is safe inside attributes)."""
    return html.escape(str(x), quote=True)


# --------------------------------------------------------------------------- SVG charts


def _nice_step(span: float, target: int) -> float:
    raw = span / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    step = _nice_step(hi - lo, target)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t += step
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values for a log axis over [lo, hi] (lo > 0)."""
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if e1 - e0 >= 2:
        ticks = [10.0**e for e in range(e0, e1 + 1)]
        if e1 - e0 <= 3:
            ticks += [m * 10.0**e for e in range(e0, e1 + 1) for m in (2, 5)]
        return sorted(t for t in ticks if lo <= t <= hi)
    return [t for t in nice_ticks(lo, hi, 5) if t > 0]


def thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most about MAX_POINTS of a series: every k-th point, the last one always kept."""
    if len(points) <= MAX_POINTS:
        return points
    k = math.ceil(len(points) / MAX_POINTS)
    out = points[::k]
    if out[-1] != points[-1]:
        out.append(points[-1])
    return out


def svg_line_chart(
    series: dict[str, list[tuple[float, float]]],
    title: str,
    x_label: str,
    y_label: str,
    log_y: bool = False,
    width: int = 640,
    height: int = 300,
) -> str:
    """An inline SVG line chart with axes, tick labels and a legend.

    Non-finite points (and non-positive ones when ``log_y``) break the line
    instead of breaking the chart; a series with few points also gets markers;
    with no plottable point the chart says "no data".
    """
    ml, mr, mt, mb = 62, 14, 30, 44
    pw, ph = width - ml - mr, height - mt - mb

    def ok(x, y) -> bool:
        try:
            x, y = float(x), float(y)
        except (TypeError, ValueError):
            return False
        return math.isfinite(x) and math.isfinite(y) and (y > 0 if log_y else True)

    clean: dict[str, list[list[tuple[float, float]]]] = {}  # name -> segments
    xs: list[float] = []
    ys: list[float] = []
    for name, pts in series.items():
        segs: list[list[tuple[float, float]]] = [[]]
        for x, y in thin(list(pts or [])):
            if ok(x, y):
                segs[-1].append((float(x), float(y)))
                xs.append(float(x))
                ys.append(float(y))
            elif segs[-1]:
                segs.append([])
        clean[name] = [s for s in segs if s]

    parts = [
        f'<svg class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{width / 2}" y="18" text-anchor="middle" class="ct">{esc(title)}</text>',
    ]
    if not xs:
        parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
        parts.append(f'<text x="{ml + pw / 2}" y="{mt + ph / 2}" text-anchor="middle" class="nd">no data</text>')
        parts.append("</svg>")
        return "".join(parts)

    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 0.5 if x0 == 0 else x0 - abs(x0) * 0.05, x1 + 0.5 if x1 == 0 else x1 + abs(x1) * 0.05
    if log_y:
        y0, y1 = min(ys), max(ys)
        if y1 == y0:
            y0, y1 = y0 / 1.5, y1 * 1.5
        ly0, ly1 = math.log10(y0), math.log10(y1)
        pad = (ly1 - ly0) * 0.05
        ly0, ly1 = ly0 - pad, ly1 + pad
        ty = lambda y: mt + ph - (math.log10(y) - ly0) / (ly1 - ly0) * ph  # noqa: E731
        yticks = log_ticks(10**ly0, 10**ly1)
    else:
        y0, y1 = min(ys), max(ys)
        if y1 == y0:
            y0, y1 = y0 - (abs(y0) * 0.1 or 1.0), y1 + (abs(y1) * 0.1 or 1.0)
        pad = (y1 - y0) * 0.05
        y0, y1 = y0 - pad, y1 + pad
        ty = lambda y: mt + ph - (y - y0) / (y1 - y0) * ph  # noqa: E731
        yticks = nice_ticks(y0, y1, 5)
    tx = lambda x: ml + (x - x0) / (x1 - x0) * pw  # noqa: E731

    # grid and tick labels
    for t in yticks:
        y = ty(t)
        parts.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{ml + pw}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{ml - 5}" y="{y + 4:.1f}" text-anchor="end" class="tk">{esc(fmt_num(t, 3))}</text>')
    for t in nice_ticks(x0, x1, 6):
        x = tx(t)
        parts.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" class="grid"/>')
        parts.append(f'<text x="{x:.1f}" y="{mt + ph + 15}" text-anchor="middle" class="tk">{esc(fmt_num(t, 3))}</text>')
    parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#666"/>')
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle" class="al">{esc(x_label)}</text>')
    parts.append(
        f'<text x="14" y="{mt + ph / 2}" text-anchor="middle" class="al" '
        f'transform="rotate(-90 14 {mt + ph / 2})">{esc(y_label)}{" (log)" if log_y else ""}</text>'
    )

    # data
    for i, (name, segs) in enumerate(clean.items()):
        color = PALETTE[i % len(PALETTE)]
        n_pts = sum(len(s) for s in segs)
        for seg in segs:
            pts = " ".join(f"{tx(x):.1f},{ty(y):.1f}" for x, y in seg)
            if len(seg) > 1:
                parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.6"/>')
            if n_pts <= 60 or len(seg) == 1:
                for x, y in seg:
                    parts.append(f'<circle cx="{tx(x):.1f}" cy="{ty(y):.1f}" r="2.6" fill="{color}"/>')

    # legend (top right, inside the plot)
    names = list(clean)
    if names:
        lw = max(len(n) for n in names) * 6.5 + 30
        lx, ly = ml + pw - lw - 6, mt + 6
        parts.append(
            f'<rect x="{lx:.1f}" y="{ly}" width="{lw:.1f}" height="{len(names) * 15 + 6}" fill="#fff" '
            f'fill-opacity="0.85" stroke="#ccc"/>'
        )
        for i, name in enumerate(names):
            color = PALETTE[i % len(PALETTE)]
            yy = ly + 13 + i * 15
            parts.append(f'<line x1="{lx + 6:.1f}" y1="{yy - 4}" x2="{lx + 20:.1f}" y2="{yy - 4}" stroke="{color}" stroke-width="2.5"/>')
            parts.append(f'<text x="{lx + 25:.1f}" y="{yy}" class="lg">{esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- records, tables, pages


def points(records: list[dict], x: str, y: str) -> list[tuple[float, float]]:
    """(x, y) of the records that have both as numbers (a chart series from metrics.jsonl records)."""
    out = []
    for r in records:
        if x in r and y in r and isinstance(r[x], (int, float)) and isinstance(r[y], (int, float)):
            out.append((r[x], r[y]))
    return out


def table(rows: list[tuple[str, Any]], head: tuple[str, ...] | None = None) -> str:
    """An HTML table; cells are escaped and numbers compacted (``fmt_num``) unless they are ``Raw``."""
    out = ['<table>']
    if head:
        out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{c if isinstance(c, Raw) else esc(fmt_num(c))}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


class Raw(str):
    """Already-escaped HTML cell content."""


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1340px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}.muted{color:#777}.callout{background:#f3f8ff;border-left:4px solid #1f77b4;padding:8px 12px;margin:10px 0}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{border:1px solid #e4e4e4}
.ct{font-size:13px;font-weight:600}.tk{font-size:10px;fill:#555}.al{font-size:11px;fill:#333}.lg{font-size:11px}
.nd{font-size:13px;fill:#999}.grid{stroke:#eee;stroke-width:1}
pre{white-space:pre-wrap;background:#f7f7f7;padding:6px 8px;margin:2px 0 10px;border:1px solid #e6e6e6}
""".strip()


def page(title: str, body: str, css: str = CSS) -> str:
    """A complete offline HTML page: ``body`` (HTML) under ``title`` with the inline stylesheet."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{css}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
