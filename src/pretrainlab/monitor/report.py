"""Static, self-contained HTML report of a run (``<run>/report.html``).

No scripts, no web fonts, no CDN: charts are inline SVG generated here, styles
are a small inline stylesheet, so the file opens offline and can be attached to
a ticket or archived with the run. Works on partial runs (few metrics, no
eval.json, no meta.json).
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import statistics
import time
from pathlib import Path
from typing import Any

from pretrainlab.errors import UserError
from pretrainlab.fsio import atomic_write_text, iter_jsonl, read_json

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


def _esc(x: Any) -> str:
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


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values for a log axis over [lo, hi] (lo > 0)."""
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if e1 - e0 >= 2:
        ticks = [10.0**e for e in range(e0, e1 + 1)]
        if e1 - e0 <= 3:
            ticks += [m * 10.0**e for e in range(e0, e1 + 1) for m in (2, 5)]
        return sorted(t for t in ticks if lo <= t <= hi)
    return [t for t in nice_ticks(lo, hi, 5) if t > 0]


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
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
        for x, y in _thin(list(pts or [])):
            if ok(x, y):
                segs[-1].append((float(x), float(y)))
                xs.append(float(x))
                ys.append(float(y))
            elif segs[-1]:
                segs.append([])
        clean[name] = [s for s in segs if s]

    parts = [
        f'<svg class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{width / 2}" y="18" text-anchor="middle" class="ct">{_esc(title)}</text>',
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
        yticks = _log_ticks(10**ly0, 10**ly1)
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
        parts.append(f'<text x="{ml - 5}" y="{y + 4:.1f}" text-anchor="end" class="tk">{_esc(fmt_num(t, 3))}</text>')
    for t in nice_ticks(x0, x1, 6):
        x = tx(t)
        parts.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" class="grid"/>')
        parts.append(f'<text x="{x:.1f}" y="{mt + ph + 15}" text-anchor="middle" class="tk">{_esc(fmt_num(t, 3))}</text>')
    parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#666"/>')
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle" class="al">{_esc(x_label)}</text>')
    parts.append(
        f'<text x="14" y="{mt + ph / 2}" text-anchor="middle" class="al" '
        f'transform="rotate(-90 14 {mt + ph / 2})">{_esc(y_label)}{" (log)" if log_y else ""}</text>'
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
            parts.append(f'<text x="{lx + 25:.1f}" y="{yy}" class="lg">{_esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- run data


def _load_jsonl(path: Path) -> list[dict]:
    return list(iter_jsonl(path)) if path.is_file() else []


def _load_json(path: Path) -> dict | None:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _load_config(run_dir: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _points(records: list[dict], x: str, y: str) -> list[tuple[float, float]]:
    out = []
    for r in records:
        if x in r and y in r and isinstance(r[x], (int, float)) and isinstance(r[y], (int, float)):
            out.append((r[x], r[y]))
    return out


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            rows += _flatten(v, key + ".")
        else:
            rows.append((key, v))
    return rows


def _fmt_time(t: Any) -> str:
    if isinstance(t, (int, float)) and t > 1e8:
        return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")
    return str(t)


def _table(rows: list[tuple[str, Any]], head: tuple[str, ...] | None = None) -> str:
    out = ['<table>']
    if head:
        out.append("<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else _esc(fmt_num(c))}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


class _Raw(str):
    """Already-escaped HTML cell content."""


def _get(d: dict, *path, default=None):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def _summary(meta: dict, cfg: dict, train: list[dict], val: list[dict]) -> list[tuple[str, Any]]:
    last = train[-1] if train else {}
    tps = [r["tokens_per_s"] for r in train if isinstance(r.get("tokens_per_s"), (int, float))]
    mfus = [r["mfu"] for r in train if isinstance(r.get("mfu"), (int, float)) and math.isfinite(r["mfu"])]
    half = lambda xs: xs[len(xs) // 2 :] if len(xs) > 1 else xs  # noqa: E731  (skip warm-up)
    peak = next((v for k, v in _flatten(meta) if "peak_flops" in k and isinstance(v, (int, float))), None)
    peak_src = next((v for k, v in _flatten(meta) if "peak" in k and isinstance(v, str)), None)
    params = next((v for k, v in _flatten(meta) if "param" in k and "total" in k and isinstance(v, (int, float))), None)
    if params is None:
        params = next((v for k, v in _flatten(meta) if "param" in k and isinstance(v, (int, float))), None)
    rows: list[tuple[str, Any]] = [
        ("parameters", f"{int(params):,}" if params is not None else None),
        ("model", " ".join(f"{k}={_get(cfg, 'model', k)}" for k in ("d_model", "n_layers", "n_heads", "vocab_size"))
         if cfg.get("model") else None),
        ("steps (logged / planned)", f"{last.get('step', '-')} / {_get(cfg, 'train', 'steps', default='-')}"),
        ("tokens seen", last.get("tokens")),
        ("wall time (s)", last.get("elapsed_s")),
        ("tokens/s (median, 2nd half)", statistics.median(half(tps)) if tps else None),
        ("MFU (median, 2nd half)", f"{statistics.median(half(mfus)) * 100:.2f}%" if mfus else None),
        ("peak FLOP/s", peak),
        ("peak FLOP/s source", peak_src),
        ("seq_len / global batch tokens", f"{_get(cfg, 'train', 'seq_len', default='-')} / "
         f"{_get(cfg, 'train', 'global_batch_tokens', default='-')}"),
        ("lr / schedule", f"{_get(cfg, 'optim', 'lr', default='-')} / {_get(cfg, 'optim', 'schedule', default='-')}"),
        ("precision / device", f"{_get(cfg, 'train', 'precision', default='-')} / {_get(cfg, 'train', 'device', default='-')}"),
    ]
    if val:
        v0, v1 = val[0], val[-1]
        rows.append(("first val loss", _Raw(f"<b>{_esc(fmt_num(v0.get('val_loss')))}</b> at step {_esc(v0.get('step'))}")))
        rows.append(("final val loss", _Raw(f"<b>{_esc(fmt_num(v1.get('val_loss')))}</b> at step {_esc(v1.get('step'))}")))
    return [(k, v) for k, v in rows if v is not None]


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


def _mixture_section(events: list[dict]) -> str:
    """Intended vs realized token share per source and stage, from the latest mix_shares event."""
    shares = [e for e in events if e.get("event") == "mix_shares"]
    if not shares:
        return ""
    rows = []
    for stage, info in (shares[-1].get("stages") or {}).items():
        for source, intended in sorted((info.get("intended") or {}).items()):
            realized = (info.get("realized") or {}).get(source)
            rows.append((stage, source, f"{100 * intended:.1f}%",
                         "-" if not info.get("tokens") else f"{100 * (realized or 0):.1f}%", info.get("tokens")))
    stages = [e for e in events if e.get("event") == "mix_stage"]
    note = "".join(f"<div class=\"muted\">stage {_esc(e.get('previous'))} → {_esc(e.get('stage'))} at "
                   f"{_esc(fmt_num(e.get('tokens')))} tokens (step {_esc(e.get('step'))})</div>" for e in stages)
    return ("<h2>Data mixture</h2>" + note
            + _table(rows, ("stage", "source", "intended share", "realized share", "stage tokens so far")))


def build_report_html(run_dir: str | Path) -> str:
    """The report for ``run_dir`` as an HTML string (see ``write_report``)."""
    run_dir = Path(run_dir)
    meta = _load_json(run_dir / "meta.json") or {}
    cfg = _load_config(run_dir)
    metrics = _load_jsonl(run_dir / "metrics.jsonl")
    events = _load_jsonl(run_dir / "events.jsonl")
    ev = _load_json(run_dir / "eval.json")
    train = [r for r in metrics if r.get("kind") == "train"]
    val = [r for r in metrics if r.get("kind") == "val"]
    name = run_dir.resolve().name

    body = [f"<h1>Run report: {_esc(name)}</h1>",
            f'<div class="muted">{_esc(run_dir.resolve())} · generated {_esc(_fmt_time(time.time()))} · '
            f"{len(train)} train and {len(val)} validation records</div>"]

    if val:
        v0, v1 = val[0], val[-1]
        best = min((r for r in val if isinstance(r.get("val_loss"), (int, float))), key=lambda r: r["val_loss"], default=None)
        best_txt = f" · best {_esc(fmt_num(best['val_loss']))} at step {_esc(best['step'])}" if best else ""
        body.append(
            f'<div class="callout">Validation loss: first <b>{_esc(fmt_num(v0.get("val_loss")))}</b> at step '
            f'{_esc(v0.get("step"))} → final <b>{_esc(fmt_num(v1.get("val_loss")))}</b> at step {_esc(v1.get("step"))}'
            f"{best_txt}</div>"
        )
    elif not metrics:
        body.append('<div class="callout">No metrics logged yet.</div>')

    body.append("<h2>Summary</h2>")
    body.append(_table(_summary(meta, cfg, train, val)))

    # charts
    charts = []
    charts.append(svg_line_chart({"train loss": _points(train, "step", "loss"), "val loss": _points(val, "step", "val_loss")},
                                 "Loss vs step", "step", "loss"))
    charts.append(svg_line_chart({"train loss": _points(train, "tokens", "loss"), "val loss": _points(val, "tokens", "val_loss")},
                                 "Loss vs tokens", "tokens", "loss"))
    charts.append(svg_line_chart({"lr": _points(train, "step", "lr")}, "Learning rate", "step", "lr"))
    gn = _points(train, "step", "grad_norm")
    charts.append(svg_line_chart({"grad norm": gn}, "Gradient norm", "step", "grad norm",
                                 log_y=bool(gn) and all(y > 0 for _, y in gn)))
    charts.append(svg_line_chart({"tokens/s": _points(train, "step", "tokens_per_s")}, "Throughput", "step", "tokens/s"))
    if any("mfu" in r for r in train):
        charts.append(svg_line_chart({"MFU": [(x, y * 100) for x, y in _points(train, "step", "mfu")]}, "MFU", "step", "MFU (%)"))
    per_source = sorted({k.split("/", 1)[1] for r in val for k in r if k.startswith("val_loss/")})
    if per_source:
        charts.append(svg_line_chart({s: _points(val, "step", f"val_loss/{s}") for s in per_source},
                                     "Validation loss per source", "step", "val loss"))
    body.append("<h2>Training curves</h2>")
    body.append('<div class="charts">' + "".join(charts) + "</div>")
    from pretrainlab.monitor.moe_report import moe_section  # imports this module: keep it local

    body.append(moe_section(train))  # "" for dense runs
    from pretrainlab.multimodal.report import mm_section

    body.append(mm_section(run_dir, train))  # "" for text runs
    body.append(_mixture_section(events))

    # eval
    if ev:
        body.append(f"<h2>Evaluation (checkpoint step {_esc(ev.get('step'))}, {_esc(fmt_num(ev.get('seconds')))} s)</h2>")
        rows = []
        for source, r in (ev.get("perplexity") or {}).items():
            if not isinstance(r, dict):
                continue
            rows.append((source, r.get("tokens"), r.get("loss"), r.get("ppl"), r.get("skipped") or ""))
        body.append(_table(rows, ("source", "tokens", "loss", "ppl", "note")))
        tasks = ev.get("tasks") or {}
        if tasks:
            body.append("<h2>Tasks (multiple choice, log-likelihood)</h2>")
            body.append(_table([(name, r.get("n"), r.get("acc"), r.get("acc_stderr"), r.get("acc_norm"),
                                 r.get("acc_norm_stderr"), r.get("chance")) for name, r in tasks.items()],
                               ("task", "n", "acc", "± stderr", "acc_norm", "± stderr", "chance")))
        samples = ev.get("samples") or []
        if samples:
            body.append("<h2>Samples</h2>")
            gen = ev.get("generation") or {}
            if gen:
                body.append(f'<div class="muted">{_esc(", ".join(f"{k}={v}" for k, v in gen.items()))}</div>')
            for s in samples:
                prompt = str(s.get("prompt", ""))
                body.append(f"<div><b>prompt</b> <code>{_esc(prompt)}</code></div>")
                body.append(f'<div class="muted">greedy</div><pre>{_esc(prompt + str(s.get("greedy", "")))}</pre>')
                body.append(f'<div class="muted">sampled</div><pre>{_esc(prompt + str(s.get("sampled", "")))}</pre>')
    else:
        body.append('<h2>Evaluation</h2><div class="muted">No eval.json yet (run `pretrainlab eval`).</div>')

    # in-training task evaluation and the checkpoint sweep
    evals = [r for r in metrics if r.get("kind") == "eval"]
    sweep = _load_json(run_dir / "eval_sweep.json")
    if evals or sweep:
        charts = []
        acc_keys = sorted({k for r in evals for k in r if k.startswith(("acc/", "acc_norm/"))})
        if acc_keys:
            charts.append(svg_line_chart({k: _points(evals, "tokens", k) for k in acc_keys},
                                         "Task accuracy during training", "tokens", "accuracy"))
        if sweep and sweep.get("checkpoints"):
            from pretrainlab.eval.sweep import sweep_charts

            charts += sweep_charts(sweep["checkpoints"])
        body.append("<h2>Evaluation across training</h2>")
        body.append('<div class="charts">' + "".join(charts) + "</div>")

    # metadata
    body.append("<h2>Run metadata</h2>")
    body.append(_table(_flatten(meta), ("key", "value")) if meta else '<div class="muted">No meta.json.</div>')

    # events
    body.append("<h2>Events</h2>")
    if events:
        from pretrainlab.monitor.dashboard import RunData, events_timeline  # the dashboard's timeline view

        body.append(events_timeline([RunData(name, run_dir)], table=False))
        rows = []
        for e in events:
            extra = ", ".join(f"{k}={fmt_num(v) if isinstance(v, (int, float)) else v}"
                              for k, v in e.items() if k not in ("time", "step", "event"))
            rows.append((_fmt_time(e.get("time", "")), e.get("step", ""), e.get("event", ""), extra))
        body.append(_table(rows, ("time", "step", "event", "details")))
    else:
        body.append('<div class="muted">No events.</div>')

    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_esc(name)} · pretrainlab report</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(run_dir: str | Path) -> Path:
    """Write ``<run>/report.html`` atomically and return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}; pass runs/<name> made by `pretrainlab train`")
    if not any((run_dir / f).exists() for f in ("config.yaml", "metrics.jsonl", "meta.json")):
        raise UserError(f"{run_dir} is not a run directory (no config.yaml, metrics.jsonl or meta.json)")
    out = run_dir / "report.html"
    atomic_write_text(out, build_report_html(run_dir))
    return out
