"""Plan output: a rich table (one column per configuration), JSON, and a self-contained HTML page."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pretrainlab.fsio import atomic_write_text


def _si(x: float, unit: str = "") -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    for scale, prefix in ((1e24, "Y"), (1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _gb(x: float) -> str:
    if abs(x) < 1e8:
        return f"{x / 1e6:,.1f} MB"
    return f"{x / 1e9:,.1f} GB"


def _kwh(x: float) -> str:
    return f"{x / 1000:,.1f} MWh" if x >= 1000 else f"{x:,.3g} kWh"


def _tonnes(x: float) -> str:
    return f"{x:,.1f} t" if x >= 1 else f"{x * 1000:,.3g} kg"


def _dur(s: float) -> str:
    if s < 10:
        return f"{s:.3g} s"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.2f} days"


def _range(pair, fmt: Callable[[float], str]) -> str:
    lo, hi = pair
    return fmt(lo) if math.isclose(lo, hi) else f"{fmt(lo)} – {fmt(hi)}"


def _fits(m: dict) -> str:
    if m["fits"] is None:
        return "unknown (activations need an architecture)"
    if m["max_micro_batch"] is None:
        return "NO (model states alone)"
    return f"{'yes' if m['fits'] else 'NO'}, {m['max_micro_batch']}"


def _money(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.3g}"


# (section, label, getter) — each getter formats one plan's value.
ROWS: list[tuple[str, str, Callable[[dict], str]]] = [
    ("model", "model", lambda p: p["model"]["name"]),
    ("model", "parameters total / active", lambda p: f"{_si(p['model']['total_params'])} / {_si(p['model']['active_params'])}"),
    ("model", "sequence, micro-batch, global batch",
     lambda p: f"{p['model']['seq_len']}, {p['model']['micro_batch']}, {_si(p['model']['global_batch_tokens'])} tokens"),
    ("hardware", "devices x hardware",
     lambda p: f"{p['hardware']['devices']} x {p['hardware']['name']} ({p['hardware']['precision']})"),
    ("hardware", "peak per device", lambda p: f"{_si(p['hardware']['peak_flops'], 'FLOP/s')} ({p['hardware']['peak_source']})"),
    ("hardware", "parallelism t/p/d/e, ZeRO",
     lambda p: "{tensor_parallel}/{pipeline_parallel}/{data_parallel}/{expert_parallel}".format(**p["parallelism"])
     + f", ZeRO {p['memory']['zero_stage']}"),
    ("compute", "FLOPs/token 6N", lambda p: _si(p["compute"]["flops_per_token_6n"], "FLOP")),
    ("compute", "FLOPs/token 6N + 12·L·d·s", lambda p: _si(p["compute"]["flops_per_token_6n_plus_attention"], "FLOP")),
    ("compute", "formula used", lambda p: p["compute"]["formula_text"]),
    ("compute", "tokens", lambda p: f"{_si(p['compute']['tokens'])} ({p['compute']['tokens_source']})"),
    ("compute", "total FLOPs", lambda p: f"{p['compute']['total_flops']:.3g}"),
    ("compute", "MFU", lambda p: f"{p['compute']['mfu']:.1%} ({p['compute']['mfu_source']})"),
    ("compute", "effective cluster FLOP/s", lambda p: f"{p['compute']['effective_flops']:.3g}"),
    ("compute", "tokens/s (per device)",
     lambda p: f"{_si(p['compute']['tokens_per_s'])} ({_si(p['compute']['tokens_per_s_per_device'])})"),
    ("compute", "steps, step time", lambda p: f"{p['compute']['steps']:,.0f}, {_dur(p['compute']['step_seconds'])}"),
    ("time", "pure compute", lambda p: f"{p['time']['pure_compute_seconds']:.3g} s = {_dur(p['time']['pure_compute_seconds'])}"),
    ("time", "wall time with buffer",
     lambda p: f"{_range(p['time']['wall_seconds'], _dur)} (x{p['time']['buffer'][0]:g}–{p['time']['buffer'][1]:g})"),
    ("time", "device-hours", lambda p: _range(p["time"]["device_hours"], lambda h: f"{h:,.3g}" if h < 100 else f"{h:,.0f}")),
    ("time", "cost", lambda p: "n/a" if not p["time"]["cost"] else
     f"{_range((p['time']['cost']['low'], p['time']['cost']['high']), _money)} ({_money(p['time']['cost']['per_hour'])}/hour)"),
    ("memory", "weights / grads / optimizer",
     lambda p: " / ".join(_gb(p["memory"][k]) for k in ("weights_bytes", "gradients_bytes", "optimizer_bytes"))),
    ("memory", "model states by ZeRO stage 0/1/2/3",
     lambda p: " / ".join(_gb(v) for v in p["memory"]["by_zero_stage"].values())),
    ("memory", "ZeRO-3 gathered layers, autocast weight copies",
     lambda p: f"{_gb(p['memory']['zero3_gather_bytes'])}, {_gb(p['memory']['autocast_weight_copies_bytes'])}"),
    ("memory", "activations", lambda p: f"{_gb(p['memory']['activations_bytes'])} ({p['memory']['activation_formula']}, "
     f"recompute {p['memory']['recompute']})"),
    ("memory", "total per device / usable",
     lambda p: f"{'>= ' if p['memory'].get('total_is_lower_bound') else ''}{_gb(p['memory']['total_bytes'])} / "
     f"{_gb(p['memory']['usable_bytes'])}"),
    ("memory", "fits? largest micro-batch", lambda p: _fits(p["memory"])),
    ("memory", "pipeline bubble (p-1)/m", lambda p: f"{p['parallelism']['pipeline_bubble']:.1%}"),
    ("checkpoint", "size, write time",
     lambda p: f"{_gb(p['checkpoint']['size_bytes'])}, {_dur(p['checkpoint']['write_seconds'])} at "
     f"{p['checkpoint']['storage_write_bytes_per_s'] / 1e9:g} GB/s"),
    ("checkpoint", "every, overhead",
     lambda p: f"{p['checkpoint']['every_steps']} steps ({_dur(p['checkpoint']['interval_seconds'])}), "
     f"{p['checkpoint']['overhead_fraction']:.1%}"),
    ("io", "token read bandwidth", lambda p: _si(p["io"]["text_bytes_per_s"], "B/s")),
    ("io", "video: raw per recorded second",
     lambda p: _si(p["io"]["video"]["raw_bytes_per_recorded_second"], "B/s") if "video" in p["io"] else "-"),
    ("io", "video: read bandwidth (compressed)",
     lambda p: f"{_si(p['io']['video']['read_bytes_per_s'], 'B/s')} (x{p['io']['video']['compression']:g})"
     if "video" in p["io"] else "-"),
    ("io", "data build (N nodes x C cores)",
     lambda p: f"{p['io']['data_prep']['tb']:g} TB at {p['io']['data_prep']['mb_per_core_s']:g} MB/s/core: " + "; ".join(
         f"{r['nodes']}x{r['cores'] // r['nodes']}: {_dur(r['hours'] * 3600)}" for r in p["io"]["data_prep"]["rows"])
     if "data_prep" in p["io"] else "-"),
    ("prior", "Chinchilla tokens 20N / fit",
     lambda p: f"{_si(p['chinchilla']['tokens_20_per_param'])} / {_si(p['chinchilla']['tokens_fit_optimal'])}"),
    ("prior", "Chinchilla predicted loss (prior)", lambda p: f"{p['chinchilla']['predicted_loss']:.3f}"),
    ("energy", "energy, CO2e",
     lambda p: f"{_range(p['energy']['kwh'], _kwh)}, {_range(p['energy']['tonnes_co2'], _tonnes)}"),
]


def _cell(getter, plan) -> str:
    try:
        return getter(plan)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return "n/a"


def print_table(plans: list[tuple[str, dict]], console: Console | None = None) -> None:
    if console is None:
        console = Console()
        console = Console(width=max(console.width, 60 + 34 * len(plans)))
    table = Table(title="pretrainlab plan", show_lines=False)
    table.add_column("section", style="dim")
    table.add_column("quantity")
    for label, _ in plans:
        table.add_column(label, overflow="fold")
    last = None
    for section, name, getter in ROWS:
        table.add_row(section if section != last else "", name, *(_cell(getter, p) for _, p in plans))
        last = section
    console.print(table)
    for label, plan in plans:
        for note in plan["notes"]:
            console.print(f"[yellow]note[/yellow] ({label}): {note}" if len(plans) > 1 else f"[yellow]note[/yellow]: {note}")


def to_json(plans: list[tuple[str, dict]]) -> str:
    if len(plans) == 1:
        return json.dumps(plans[0][1], indent=2, default=str)
    return json.dumps([{"label": label, **plan} for label, plan in plans], indent=2, default=str)


def write_html(path: str | Path, plans: list[tuple[str, dict]]) -> Path:
    """A self-contained page (no scripts, no network): the table, notes and the full JSON."""
    esc = html.escape
    head = "".join(f"<th>{esc(label)}</th>" for label, _ in plans)
    rows = []
    last = None
    for section, name, getter in ROWS:
        sec = esc(section) if section != last else ""
        last = section
        cells = "".join(f"<td>{esc(_cell(getter, p))}</td>" for _, p in plans)
        rows.append(f"<tr><td class=s>{sec}</td><td>{esc(name)}</td>{cells}</tr>")
    notes = "".join(f"<li><b>{esc(label)}</b>: {esc(n)}</li>" for label, p in plans for n in p["notes"])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>pretrainlab plan</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}td.s{{color:#888}}
pre{{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}}</style></head><body>
<h1>pretrainlab plan</h1>
<p>Formulas and references: docs/PLANNER.md. FLOPs/token by 6N (Kaplan 2020, Hoffmann 2022) and 6N + 12·L·d·s
(PaLM appendix B); memory by ZeRO (Rajbhandari 2020) and Korthikanti et al. 2022; the Chinchilla loss is a prior.</p>
<table><tr><th>section</th><th>quantity</th>{head}</tr>{''.join(rows)}</table>
<h2>Notes</h2><ul>{notes or '<li>none</li>'}</ul>
<h2>Full plan (JSON)</h2><pre>{esc(to_json(plans))}</pre></body></html>
"""
    path = Path(path)
    atomic_write_text(path, page)
    return path
