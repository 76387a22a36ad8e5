"""Static, self-contained HTML report of a run (``<run>/report.html``).

No scripts, no web fonts, no CDN: charts are inline SVG (``pretrainlab.htmlkit``),
styles a small inline stylesheet, so the file opens offline and can be attached
to a ticket or archived with the run. Works on partial runs (few metrics, no
eval.json, no meta.json).

The page is a list of sections (``monitor/rundata.py``): this module's own
(summary and curves 10, mixture 50, evaluation 60, metadata 80, events 90),
MoE 30 (``monitor/moe_report.py``), hardware 35 (``monitor/hardware_report.py``), data governance 55
(``monitor/governance_report.py``) and whatever other packages registered
(multimodal 40, evaluation across training 70; ``pretrainlab.reporting`` loads them).
"""

from __future__ import annotations

import datetime as _dt
import math
import statistics
import time
from pathlib import Path
from typing import Any

import pretrainlab.monitor.moe_report  # noqa: F401  registers the MoE section
import pretrainlab.monitor.governance_report  # noqa: F401  registers the data-governance section
import pretrainlab.monitor.hardware_report  # noqa: F401  registers the hardware section
from pretrainlab.errors import UserError
from pretrainlab.fsio import atomic_write_text, read_json
from pretrainlab.htmlkit import Raw, esc, fmt_num, page, points, svg_line_chart, table
from pretrainlab.monitor.dashboard import events_timeline
from pretrainlab.monitor.rundata import RunData, register_section, report_sections


def _load_json(path: Path) -> dict | None:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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
        rows.append(("first val loss", Raw(f"<b>{esc(fmt_num(v0.get('val_loss')))}</b> at step {esc(v0.get('step'))}")))
        rows.append(("final val loss", Raw(f"<b>{esc(fmt_num(v1.get('val_loss')))}</b> at step {esc(v1.get('step'))}")))
    return [(k, v) for k, v in rows if v is not None]


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
    note = "".join(f"<div class=\"muted\">stage {esc(e.get('previous'))} → {esc(e.get('stage'))} at "
                   f"{esc(fmt_num(e.get('tokens')))} tokens (step {esc(e.get('step'))})</div>" for e in stages)
    return ("<h2>Data mixture</h2>" + note
            + table(rows, ("stage", "source", "intended share", "realized share", "stage tokens so far")))




@register_section("summary", 10)
def _summary_section(run: RunData) -> str:
    train, val = run.train, run.val
    body = []
    if val:
        v0, v1 = val[0], val[-1]
        best = min((r for r in val if isinstance(r.get("val_loss"), (int, float))), key=lambda r: r["val_loss"], default=None)
        best_txt = f" · best {esc(fmt_num(best['val_loss']))} at step {esc(best['step'])}" if best else ""
        body.append(
            f'<div class="callout">Validation loss: first <b>{esc(fmt_num(v0.get("val_loss")))}</b> at step '
            f'{esc(v0.get("step"))} → final <b>{esc(fmt_num(v1.get("val_loss")))}</b> at step {esc(v1.get("step"))}'
            f"{best_txt}</div>"
        )
    elif not (train or val or run.evals):
        body.append('<div class="callout">No metrics logged yet.</div>')
    body.append("<h2>Summary</h2>")
    body.append(table(_summary(run.meta, run.config, train, val)))
    body.append("<h2>Training curves</h2>")
    body.append('<div class="charts">' + "".join(_curves(train, val)) + "</div>")
    return "\n".join(body)


def _curves(train: list[dict], val: list[dict]) -> list[str]:
    charts = [
        svg_line_chart({"train loss": points(train, "step", "loss"), "val loss": points(val, "step", "val_loss")},
                       "Loss vs step", "step", "loss"),
        svg_line_chart({"train loss": points(train, "tokens", "loss"), "val loss": points(val, "tokens", "val_loss")},
                       "Loss vs tokens", "tokens", "loss"),
        svg_line_chart({"lr": points(train, "step", "lr")}, "Learning rate", "step", "lr"),
    ]
    gn = points(train, "step", "grad_norm")
    charts.append(svg_line_chart({"grad norm": gn}, "Gradient norm", "step", "grad norm",
                                 log_y=bool(gn) and all(y > 0 for _, y in gn)))
    charts.append(svg_line_chart({"tokens/s": points(train, "step", "tokens_per_s")}, "Throughput", "step", "tokens/s"))
    if any("mfu" in r for r in train):
        charts.append(svg_line_chart({"MFU": [(x, y * 100) for x, y in points(train, "step", "mfu")]}, "MFU", "step", "MFU (%)"))
    per_source = sorted({k.split("/", 1)[1] for r in val for k in r if k.startswith("val_loss/")})
    if per_source:
        charts.append(svg_line_chart({s: points(val, "step", f"val_loss/{s}") for s in per_source},
                                     "Validation loss per source", "step", "val loss"))
    return charts


@register_section("mixture", 50)
def _mixture(run: RunData) -> str:
    return _mixture_section(run.events)


@register_section("evaluation", 60)
def _eval_section(run: RunData) -> str:
    ev = _load_json(run.path / "eval.json")
    if not ev:
        return '<h2>Evaluation</h2><div class="muted">No eval.json yet (run `pretrainlab eval`).</div>'
    body = [f"<h2>Evaluation (checkpoint step {esc(ev.get('step'))}, {esc(fmt_num(ev.get('seconds')))} s)</h2>"]
    rows = [(source, r.get("tokens"), r.get("loss"), r.get("ppl"), r.get("skipped") or "")
            for source, r in (ev.get("perplexity") or {}).items() if isinstance(r, dict)]
    body.append(table(rows, ("source", "tokens", "loss", "ppl", "note")))
    tasks = ev.get("tasks") or {}
    if tasks:
        body.append("<h2>Tasks (multiple choice, log-likelihood)</h2>")
        body.append(table([(name, r.get("n"), r.get("acc"), r.get("acc_stderr"), r.get("acc_norm"),
                            r.get("acc_norm_stderr"), r.get("chance")) for name, r in tasks.items()],
                          ("task", "n", "acc", "± stderr", "acc_norm", "± stderr", "chance")))
    samples = ev.get("samples") or []
    if samples:
        body.append("<h2>Samples</h2>")
        gen = ev.get("generation") or {}
        if gen:
            body.append(f'<div class="muted">{esc(", ".join(f"{k}={v}" for k, v in gen.items()))}</div>')
        for s in samples:
            prompt = str(s.get("prompt", ""))
            body.append(f"<div><b>prompt</b> <code>{esc(prompt)}</code></div>")
            body.append(f'<div class="muted">greedy</div><pre>{esc(prompt + str(s.get("greedy", "")))}</pre>')
            body.append(f'<div class="muted">sampled</div><pre>{esc(prompt + str(s.get("sampled", "")))}</pre>')
    return "\n".join(body)


@register_section("metadata", 80)
def _metadata_section(run: RunData) -> str:
    meta = run.meta
    return "<h2>Run metadata</h2>\n" + (table(_flatten(meta), ("key", "value")) if meta else '<div class="muted">No meta.json.</div>')


@register_section("events", 90)
def _events_section(run: RunData) -> str:
    if not run.events:
        return '<h2>Events</h2>\n<div class="muted">No events.</div>'
    rows = []
    for e in run.events:
        extra = ", ".join(f"{k}={fmt_num(v) if isinstance(v, (int, float)) else v}"
                          for k, v in e.items() if k not in ("time", "step", "event"))
        rows.append((_fmt_time(e.get("time", "")), e.get("step", ""), e.get("event", ""), extra))
    return ("<h2>Events</h2>\n" + events_timeline([run], table=False) + "\n"
            + table(rows, ("time", "step", "event", "details")))


def build_report_html(run_dir: str | Path) -> str:
    """The report for ``run_dir`` as an HTML string (see ``write_report``): every registered section in order."""
    run_dir = Path(run_dir)
    name = run_dir.resolve().name
    run = RunData(name, run_dir)
    body = [f"<h1>Run report: {esc(name)}</h1>",
            f'<div class="muted">{esc(run_dir.resolve())} · generated {esc(_fmt_time(time.time()))} · '
            f"{len(run.train)} train and {len(run.val)} validation records</div>"]
    body += [html for section in report_sections() if (html := section.render(run))]
    return page(f"{name} · pretrainlab report", "\n".join(body))


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
