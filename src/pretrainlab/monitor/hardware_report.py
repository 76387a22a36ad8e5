"""The hardware view (run report and live dashboard): rank × time heat maps and the stragglers called out.

Reads the ``hw/rank{r}/...`` keys that ``monitor/cluster.py`` adds to the train
records and the ``ranks`` record naming each rank's host. One heat map per
metric (rows: ranks, columns: log steps, colour: the value on a white→red scale
from the metric's minimum to its maximum over the run): GPU temperature, power,
memory and utilisation (on CPU-only runs: process RSS and CPU utilisation), the
step time before synchronising (``local_s``, the straggler rule's input) and the
data wait. Straggler events are listed above the maps. Returns "" for runs
without hardware metrics.
"""

from __future__ import annotations

import math
import re

from pretrainlab.htmlkit import esc, fmt_num, table
from pretrainlab.monitor.rundata import RunData, register_section

MAX_COLUMNS = 160  # log steps are averaged into at most this many columns
MAX_ROWS = 64  # ranks shown; larger jobs show the first MAX_ROWS (the straggler list names every rank)
_KEY = re.compile(r"^hw/rank(\d+)/(\w+)$")
# (field, title, unit); a GPU field and its CPU-only stand-in share a slot: the first with data is drawn
VIEWS = [
    (("gpu_temp_c",), "GPU temperature", "°C"),
    (("gpu_power_w",), "GPU power", "W"),
    (("gpu_mem_used_gb", "rss_gb"), "Memory used", "GiB"),
    (("gpu_util_pct", "proc_cpu_pct"), "Utilisation", "%"),
    (("local_s",), "Step time before synchronising", "s"),
    (("data_wait_s",), "Data wait per step", "s"),
]


def hardware_table(train: list[dict]) -> dict[str, dict[int, list[tuple[int, float]]]]:
    """field -> rank -> [(step, value)] from the train records."""
    out: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for rec in train:
        step = rec.get("step")
        for key, value in rec.items():
            m = _KEY.match(key)
            if m and isinstance(value, (int, float)) and isinstance(step, (int, float)) and math.isfinite(value):
                out.setdefault(m.group(2), {}).setdefault(int(m.group(1)), []).append((int(step), float(value)))
    return out


def _color(t: float) -> str:
    """0 -> white, 1 -> dark red."""
    t = max(0.0, min(1.0, t))
    return f"#{int(255 - 55 * t):02x}{int(255 * (1 - t)):02x}{int(255 * (1 - t)):02x}"


def svg_rank_heatmap(series: dict[int, list[tuple[int, float]]], title: str, unit: str, hosts: list[str],
                     width: int = 640) -> str:
    """Rows: ranks; columns: log steps (averaged into at most ``MAX_COLUMNS``); colour: min→max of the values."""
    ranks = sorted(series)[:MAX_ROWS]
    steps = sorted({s for r in ranks for s, _ in series[r]})
    k = max(1, math.ceil(len(steps) / MAX_COLUMNS))
    cols = [steps[i:i + k] for i in range(0, len(steps), k)]
    col_of = {s: j for j, c in enumerate(cols) for s in c}
    grid: dict[tuple[int, int], list[float]] = {}
    for r in ranks:
        for s, v in series[r]:
            grid.setdefault((r, col_of[s]), []).append(v)
    cells = {rc: sum(vs) / len(vs) for rc, vs in grid.items()}
    lo, hi = min(cells.values()), max(cells.values())
    row_h = max(6, min(22, 360 // max(1, len(ranks))))
    ml, mr, mt, mb = 150, 90, 30, 34
    pw, ph = width - ml - mr, row_h * len(ranks)
    height = mt + ph + mb
    cw = pw / max(1, len(cols))
    parts = [f'<svg class="chart hw-heatmap" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'role="img" aria-label="{esc(title)}"><rect width="{width}" height="{height}" fill="#fff"/>',
             f'<text x="{width / 2}" y="18" text-anchor="middle" class="ct">{esc(title)} ({esc(unit)})</text>']
    for i, r in enumerate(ranks):
        host = hosts[r] if r < len(hosts) else ""
        y = mt + i * row_h
        if row_h >= 10:
            parts.append(f'<text x="{ml - 5}" y="{y + row_h / 2 + 3:.1f}" text-anchor="end" class="tk">'
                         f'rank {r}{" · " + esc(host[:14]) if host else ""}</text>')
        for j, c in enumerate(cols):
            if (r, j) not in cells:
                continue
            v = cells[(r, j)]
            t = (v - lo) / (hi - lo) if hi > lo else 0.5
            parts.append(f'<rect x="{ml + j * cw:.1f}" y="{y}" width="{cw + 0.3:.1f}" height="{row_h}" '
                         f'fill="{_color(t)}"><title>rank {r} {esc(host)}, step {c[-1]}: {fmt_num(v)} {esc(unit)}'
                         '</title></rect>')
    parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#666"/>')
    for j in sorted({0, len(cols) // 2, len(cols) - 1}):
        parts.append(f'<text x="{ml + (j + 0.5) * cw:.1f}" y="{mt + ph + 14}" text-anchor="middle" class="tk">'
                     f'{cols[j][-1]}</text>')
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 4}" text-anchor="middle" class="al">step</text>')
    for i, (t, v) in enumerate(((1.0, hi), (0.5, (lo + hi) / 2), (0.0, lo))):
        parts.append(f'<rect x="{ml + pw + 8}" y="{mt + i * 18}" width="14" height="14" fill="{_color(t)}" stroke="#ccc"/>'
                     f'<text x="{ml + pw + 26}" y="{mt + i * 18 + 11}" class="lg">{esc(fmt_num(v))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def straggler_table(run: RunData) -> str:
    found = [e for e in run.events if e.get("event") == "straggler"]
    if not found:
        return ""
    rows = [(e.get("step"), e.get("rank"), e.get("host"), fmt_num(e.get("seconds")), fmt_num(e.get("median")),
             f"{e['ratio']:.2f}x" if isinstance(e.get("ratio"), (int, float)) else "-") for e in found]
    return ('<div class="callout straggler">Stragglers: '
            + esc(", ".join(f"rank {e.get('rank')} on {e.get('host')}" for e in found)) + "</div>"
            + table(rows, ("step", "rank", "host", "local s/step", "others' median", "ratio")))


def hardware_section(run: RunData) -> str:
    """The hardware view of one run ("" when it logged no hardware metrics)."""
    data = hardware_table(run.train)
    if not data:
        return ""
    charts = []
    for fields, title, unit in VIEWS:
        field = next((f for f in fields if data.get(f)), None)
        if field is not None:
            charts.append(svg_rank_heatmap(data[field], title, unit, run.hosts))
    ranks = sorted({r for per_rank in data.values() for r in per_rank})
    note = (f'<div class="muted">{len(ranks)} rank(s) on {len(set(run.hosts)) or "?"} host(s); values are means over '
            "each log interval; step time before synchronising = data wait + forwards + the backwards before the "
            "first gradient all-reduce (the straggler rule's input).</div>")
    return straggler_table(run) + note + '<div class="charts">' + "".join(charts) + "</div>"


@register_section("hardware", 35)
def _hardware_report_section(run: RunData) -> str:
    body = hardware_section(run)
    return f"<h2>Hardware</h2>{body}" if body else ""
