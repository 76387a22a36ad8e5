"""The MoE section of the run report: expert-load heat maps over time and routing-health curves.

Reads the ``moe/...`` keys that ``train/moe_monitor.py`` adds to the train
records of metrics.jsonl. Each MoE layer gets a heat map (x: step, y: expert,
colour: the expert's share of routed tokens relative to a uniform share, on a
log2 scale: blue = under-used, white = balanced, red = over-used), then line
charts of load CV, drop rate, aux/z losses and the cross-entropy part of the
loss. Returns "" for dense runs so the report is unchanged for them.
"""

from __future__ import annotations

import math
import re

from pretrainlab.htmlkit import esc, points, svg_line_chart
from pretrainlab.monitor.rundata import RunData, register_section

MAX_COLUMNS = 160  # steps are averaged into at most this many columns
_LOAD_KEY = re.compile(r"^moe/layer(\d+)/tokens_per_expert$")


def moe_layer_ids(train: list[dict]) -> list[int]:
    ids = {int(m.group(1)) for r in train for k in r if (m := _LOAD_KEY.match(k))}
    return sorted(ids)


def _color(rel: float) -> str:
    """rel = load / uniform load; log2 scale clamped to [-2, 2]: blue < 1 < red."""
    v = max(-2.0, min(2.0, math.log2(rel))) / 2.0 if rel > 0 else -1.0
    if v >= 0:
        g = int(255 * (1 - v))
        return f"#ff{g:02x}{g:02x}"
    g = int(255 * (1 + v))
    return f"#{g:02x}{g:02x}ff"


def svg_load_heatmap(steps: list[int], loads: list[list[float]], title: str, width: int = 640, height: int = 260) -> str:
    """Heat map of expert load over steps; ``loads[j]`` is tokens per expert at ``steps[j]``."""
    n_exp = len(loads[0])
    if len(steps) > MAX_COLUMNS:  # average consecutive steps into columns
        k = math.ceil(len(steps) / MAX_COLUMNS)
        steps = [steps[min(i + k, len(steps)) - 1] for i in range(0, len(steps), k)]
        loads = [[sum(c) / len(c) for c in zip(*loads[i:i + k])] for i in range(0, len(loads), k)]
    ml, mr, mt, mb = 62, 70, 30, 40
    pw, ph = width - ml - mr, height - mt - mb
    cw, rh = pw / len(steps), ph / n_exp
    parts = [
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{esc(title)}"><rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{width / 2}" y="18" text-anchor="middle" class="ct">{esc(title)}</text>',
    ]
    for j, col in enumerate(loads):
        total = sum(col)
        for e, c in enumerate(col):
            rel = c * n_exp / total if total > 0 else 1.0
            parts.append(f'<rect x="{ml + j * cw:.1f}" y="{mt + e * rh:.1f}" width="{cw + 0.3:.1f}" height="{rh + 0.3:.1f}" '
                         f'fill="{_color(rel)}"><title>step {steps[j]}, expert {e}: {rel:.2f}x uniform</title></rect>')
    parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#666"/>')
    label_every = max(1, math.ceil(n_exp / 16))
    for e in range(0, n_exp, label_every):
        parts.append(f'<text x="{ml - 5}" y="{mt + (e + 0.5) * rh + 3:.1f}" text-anchor="end" class="tk">{e}</text>')
    for j in sorted({0, len(steps) // 2, len(steps) - 1}):
        parts.append(f'<text x="{ml + (j + 0.5) * cw:.1f}" y="{mt + ph + 14}" text-anchor="middle" class="tk">{steps[j]}</text>')
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle" class="al">step</text>')
    parts.append(f'<text x="14" y="{mt + ph / 2}" text-anchor="middle" class="al" '
                 f'transform="rotate(-90 14 {mt + ph / 2})">expert</text>')
    for i, (rel, text) in enumerate(((4.0, "4x"), (2.0, "2x"), (1.0, "1x"), (0.5, "0.5x"), (0.25, "0.25x"))):
        y = mt + i * 18
        parts.append(f'<rect x="{ml + pw + 10}" y="{y}" width="14" height="14" fill="{_color(rel)}" stroke="#ccc"/>')
        parts.append(f'<text x="{ml + pw + 28}" y="{y + 11}" class="lg">{text}</text>')
    parts.append("</svg>")
    return "".join(parts)


@register_section("moe", 30)
def _moe_report_section(run: RunData) -> str:
    return moe_section(run.train)


def moe_section(train: list[dict]) -> str:
    """HTML for the report's MoE section ("" when the run logged no MoE metrics)."""
    layers = moe_layer_ids(train)
    if not layers:
        return ""
    charts = []
    for i in layers:
        rows = [r for r in train if isinstance(r.get(f"moe/layer{i}/tokens_per_expert"), list)]
        if rows:
            charts.append(svg_load_heatmap([r["step"] for r in rows], [r[f"moe/layer{i}/tokens_per_expert"] for r in rows],
                                           f"Expert load, layer {i} (share vs uniform)"))
    charts.append(svg_line_chart({f"layer {i}": points(train, "step", f"moe/layer{i}/cv") for i in layers},
                                 "Expert load CV (std/mean)", "step", "CV"))
    charts.append(svg_line_chart({f"layer {i}": points(train, "step", f"moe/layer{i}/drop_rate") for i in layers},
                                 "Token drop rate", "step", "dropped share"))
    charts.append(svg_line_chart({"aux (load balance)": points(train, "step", "moe/aux_loss"),
                                  "z-loss": points(train, "step", "moe/z_loss")}, "Router losses (mean over layers)",
                                 "step", "loss"))
    charts.append(svg_line_chart({"total": points(train, "step", "loss"), "cross-entropy": points(train, "step", "ce_loss")},
                                 "Training loss and its cross-entropy part", "step", "loss"))
    last = train[-1]
    rows = "".join(
        f"<tr><td>{i}</td><td>{_fmt(last.get(f'moe/layer{i}/cv'))}</td><td>{_fmt(last.get(f'moe/layer{i}/max_load'))}</td>"
        f"<td>{_fmt(last.get(f'moe/layer{i}/min_load'))}</td><td>{_fmt(last.get(f'moe/layer{i}/drop_rate'))}</td>"
        f"<td>{_fmt(last.get(f'moe/layer{i}/router_grad_norm_max'))}</td></tr>"
        for i in layers
    )
    table = ("<table><tr><th>layer</th><th>load CV</th><th>max/mean load</th><th>min/mean load</th><th>drop rate</th>"
             f"<th>max router grad norm</th></tr>{rows}</table>")
    return (f'<h2>Mixture of experts</h2><div class="muted">Last logged step {esc(last.get("step"))}. '
            "Heat map colour: an expert's share of routed tokens relative to a uniform share.</div>"
            + table + '<div class="charts">' + "".join(charts) + "</div>")


def _fmt(v) -> str:
    return "-" if not isinstance(v, (int, float)) else esc(f"{v:.4g}")
