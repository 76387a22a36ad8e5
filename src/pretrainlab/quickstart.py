"""`pretrainlab quickstart`: every stage end to end with one config, timing each stage."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.table import Table

from pretrainlab.config import ProjectConfig
from pretrainlab.corpus.embedded import build_corpus
from pretrainlab.data.pipeline import build_clean_corpus
from pretrainlab.eval.run import evaluate_run
from pretrainlab.fsio import atomic_write_json
from pretrainlab.progress import console
from pretrainlab.reporting import write_report
from pretrainlab.tokenizer.shards import tokenize_corpus
from pretrainlab.tokenizer.train import train_tokenizer
from pretrainlab.recipes import train


def run_quickstart(cfg: ProjectConfig, resume: str = "auto") -> dict:
    stages: list[tuple[str, Callable[[], object]]] = [
        ("corpus build", lambda: build_corpus(cfg)),
        ("data build", lambda: build_clean_corpus(cfg)),
        ("tokenizer train", lambda: train_tokenizer(cfg)),
        ("data tokenize", lambda: tokenize_corpus(cfg)),
        ("train", lambda: train(cfg, resume=resume)),
        ("eval", lambda: evaluate_run(cfg.run_dir)),
        ("report", lambda: write_report(cfg.run_dir)),
    ]
    timings: dict[str, float] = {}
    results: dict[str, object] = {}
    t0 = time.perf_counter()
    for name, fn in stages:
        console.rule(f"[bold]{name}")
        start = time.perf_counter()
        results[name] = fn()
        timings[name] = time.perf_counter() - start
    total = time.perf_counter() - t0

    table = Table(title="quickstart: wall time per stage")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for name, sec in timings.items():
        table.add_row(name, f"{sec:.1f}")
    table.add_row("[bold]total", f"[bold]{total:.1f}")
    console.print(table)
    summary = results["train"]
    if summary.get("first_val_loss") is not None:
        console.print(
            f"validation loss: {summary['first_val_loss']:.4f} before training -> {summary['final_val_loss']:.4f} after "
            f"{summary['steps']} steps ({summary['tokens']:,} tokens, {summary['tokens_per_s']:,.0f} tok/s, "
            f"MFU {100 * summary['mfu']:.1f}%)"
        )
    tasks = (results.get("eval") or {}).get("tasks") or {}
    if tasks:
        console.print("task accuracy (4-way, chance 0.25): " + ", ".join(
            f"{name} acc {r['acc']:.3f} / acc_norm {r['acc_norm']:.3f} (n={r['n']})" for name, r in tasks.items()))
    console.print(f"report: {results['report']}")
    record = {
        "timings_s": timings,
        "total_s": total,
        "train": {k: v for k, v in summary.items() if k != "losses"},
        "report": str(results["report"]),
        "tasks": {name: {k: r[k] for k in ("acc", "acc_norm", "n")} for name, r in tasks.items()},
    }
    atomic_write_json(cfg.run_dir / "quickstart.json", record)
    return record
