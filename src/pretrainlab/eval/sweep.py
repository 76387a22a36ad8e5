"""`pretrainlab eval RUN --all-checkpoints`: evaluate every kept checkpoint, plot metrics vs tokens.

Each complete checkpoint (oldest first; ``checkpoint.keep_last`` decides how
many a run keeps) gets held-out perplexity per source and the task accuracies,
on the same task examples. Writes ``<run>/eval_sweep.json`` (one record per
checkpoint, rewritten after each so an interrupted sweep keeps what it did) and
``<run>/eval_sweep.html`` with the charts (inline SVG, ``pretrainlab.htmlkit``).
It also registers the run report's "Evaluation across training" section: task
accuracy logged during training plus the same sweep charts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pretrainlab.errors import UserError
from pretrainlab.eval.run import evaluate_model
from pretrainlab.eval.suite import resolve_tasks
from pretrainlab.fsio import atomic_write_json, atomic_write_text, read_json
from pretrainlab.htmlkit import esc, page, points, svg_line_chart
from pretrainlab.monitor.rundata import RunData, register_section
from pretrainlab.progress import console
from pretrainlab.rundir import list_checkpoints, load_checkpoint, open_run, run_device
from pretrainlab.tokenizer.vocab import load_tokenizer
from pretrainlab.train.integrity import verify

SWEEP_FILE = "eval_sweep.json"
SWEEP_HTML = "eval_sweep.html"


def sweep_charts(records: list[dict]) -> list[str]:
    """SVG charts: held-out loss per source and task accuracy, against training tokens."""
    def x(r):
        return r.get("tokens") if r.get("tokens") is not None else r.get("step")

    x_label = "tokens" if all(r.get("tokens") is not None for r in records) else "step"
    sources = sorted({s for r in records for s in (r.get("perplexity") or {})})
    loss = {s: [(x(r), (r["perplexity"].get(s) or {}).get("loss")) for r in records
                if (r["perplexity"].get(s) or {}).get("loss") is not None] for s in sources}
    tasks = sorted({t for r in records for t in (r.get("tasks") or {})})
    acc = {}
    for t in tasks:
        acc[f"{t} acc"] = [(x(r), r["tasks"][t]["acc"]) for r in records if t in (r.get("tasks") or {})]
        acc[f"{t} acc_norm"] = [(x(r), r["tasks"][t]["acc_norm"]) for r in records if t in (r.get("tasks") or {})]
    charts = [svg_line_chart(loss, "Held-out loss per checkpoint", x_label, "loss (nats/token)")]
    if acc:
        charts.append(svg_line_chart(acc, "Task accuracy per checkpoint", x_label, "accuracy"))
    return charts


def evaluate_all_checkpoints(run_dir: str | Path, cfg_overrides: list[str] | None = None) -> list[dict[str, Any]]:
    run_dir, cfg = open_run(run_dir, cfg_overrides)
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise UserError(f"{run_dir}: no complete checkpoint found; train first with `pretrainlab train`")
    device = run_device(cfg)
    tok = load_tokenizer(cfg.tokenizer_dir)
    tasks = resolve_tasks(cfg.eval.tasks, run_dir, cfg.train_tokens_dir, tok, cfg.eval.task_examples, cfg.eval.task_seed)
    records: list[dict[str, Any]] = []
    for i, (_, path) in enumerate(ckpts, 1):
        t0 = time.time()
        problem = verify(path)
        if problem:  # a damaged checkpoint is skipped, said, and left where it is
            console.print(f"[{i}/{len(ckpts)}] [yellow]skipped[/] {path}: {problem}")
            continue
        ckpt = load_checkpoint(run_dir, str(path), device)
        step, tokens = ckpt.step, ckpt.tokens
        res = evaluate_model(ckpt.model, cfg, tok, run_dir, device, samples=False, tasks=tasks)
        records.append({"checkpoint": str(path), "step": step, "tokens": tokens, **res,
                        "seconds": round(time.time() - t0, 3)})
        atomic_write_json(run_dir / SWEEP_FILE, {"run": run_dir.resolve().name, "checkpoints": records})
        overall = res["perplexity"].get("overall") or {}
        accs = ", ".join(f"{k} {v['acc']:.3f}" for k, v in res["tasks"].items())
        console.print(f"[{i}/{len(ckpts)}] step {step}: held-out loss {overall.get('loss') or float('nan'):.4f}"
                      f"{'; ' + accs if accs else ''} ({records[-1]['seconds']:.1f}s)")
    html = page(f"{run_dir.name} checkpoints", f"<h1>Checkpoint sweep: {esc(run_dir.resolve().name)}</h1>"
                f'<div class="charts">{"".join(sweep_charts(records))}</div>')
    atomic_write_text(run_dir / SWEEP_HTML, html)
    console.print(f"sweep: {run_dir / SWEEP_FILE}, charts: {run_dir / SWEEP_HTML}")
    return records


@register_section("evaluation across training", 70)
def across_training_section(run: RunData) -> str:
    """The report section: task accuracy logged during training, and the checkpoint sweep's charts."""
    try:
        sweep = read_json(run.path / SWEEP_FILE)
    except (OSError, ValueError):
        sweep = None
    records = sweep.get("checkpoints") if isinstance(sweep, dict) else None
    if not run.evals and not isinstance(sweep, dict):
        return ""
    charts = []
    acc_keys = sorted({k for r in run.evals for k in r if k.startswith(("acc/", "acc_norm/"))})
    if acc_keys:
        charts.append(svg_line_chart({k: points(run.evals, "tokens", k) for k in acc_keys},
                                     "Task accuracy during training", "tokens", "accuracy"))
    if records:
        charts += sweep_charts(records)
    return "<h2>Evaluation across training</h2>\n" + '<div class="charts">' + "".join(charts) + "</div>"
