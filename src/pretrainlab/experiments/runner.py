"""Train one experiment variant of a base config with the normal trainer and keep its per-step record.

A variant is a name plus ``--set``-style overrides on the base config. Its run
goes to ``<out>/runs/<name>``; the result (config, every step's loss / grad
norm / LR / overflow, validation records, guard events, throughput) is written to
``<run>/experiment_result.json``. Simulated bad batches (``experiments.bad_batch_steps``)
are injected here, into every variant alike. A finished variant whose config is unchanged
is reused instead of retrained, so an interrupted experiment continues where it
stopped; an unfinished run directory of a variant is replaced.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import torch

from pretrainlab.config import ProjectConfig, load_config
from pretrainlab.errors import TrainingPaused, TrainingStopped, UserError
from pretrainlab.experiments.bad_batches import BadBatches
from pretrainlab.fsio import atomic_write_json, iter_jsonl, read_json
from pretrainlab.recipes import train
from pretrainlab.train.callbacks import Callback

RESULT_FILE = "experiment_result.json"
STEP_KEYS = ("step", "tokens", "loss", "grad_norm", "lr", "overflow", "loss_scale", "grad_zero_frac", "skipped",
             "bad_batch")
GUARD_EVENTS = ("skip_step", "rollback", "stopped", "trend", "pause")


@dataclass
class Variant:
    name: str
    overrides: list[str] = field(default_factory=list)
    record_zero_grads: bool = False  # measure the share of exactly-zero gradient entries (underflow evidence)


class StepRecorder(Callback):
    """Keeps every step's metrics (the trainer logs only every ``log_every`` steps)."""

    needs_host_metrics = True  # every step's numbers, so every step waits for the device (experiments only)

    def __init__(self, record_zero_grads: bool = False):
        self.record_zero_grads = record_zero_grads
        self.steps: list[dict] = []

    def on_after_backward(self, ctx, metrics: dict) -> None:
        if not self.record_zero_grads:
            return
        zeros = total = 0
        with torch.no_grad():
            for p in ctx.raw_model.parameters():
                if p.grad is not None:
                    zeros += int((p.grad == 0).sum())
                    total += p.grad.numel()
        metrics["grad_zero_frac"] = zeros / max(total, 1)

    def on_step_end(self, ctx, metrics: dict) -> None:
        self.steps.append({k: metrics[k] for k in STEP_KEYS if k in metrics})


def require_shards(cfg: ProjectConfig) -> None:
    tokens = cfg.train_tokens_dir
    if not (tokens / "manifest.json").is_file():
        raise UserError(
            f"no token shards at {tokens}; run `pretrainlab quickstart` first (or the data stages: corpus build, "
            "data build, tokenizer train, data tokenize) with the same workdir, or point train.tokens at shards"
        )


def variant_config(base: ProjectConfig, variant: Variant, run_dir: Path, threads: int | None = None) -> ProjectConfig:
    """The base config with the variant's overrides, its own run dir, and nothing that would outlive the experiment."""
    data = base.model_dump(mode="json")
    overrides = [*variant.overrides, f"run.dir={run_dir}", f"run.name={variant.name}", "log.tensorboard=false"]
    if threads is not None:
        overrides.append(f"train.threads={threads}")
    cfg = load_config(None, overrides, base=data)
    # one checkpoint and one late validation are enough: experiments compare curves, not checkpoints
    steps = cfg.train.steps
    return load_config(None, [f"checkpoint.every={steps}", "checkpoint.keep_last=1",
                              "checkpoint.milestone_every_tokens=null"], base=cfg.model_dump(mode="json"))


TRAINING_SECTIONS = ("workdir", "tokenize", "model", "optim", "train", "mix", "packing", "guard")


def _training_key(config_json: dict) -> dict:
    """The sections that decide a run's numbers (not its name, folder, thread count or the experiment's thresholds)."""
    key = {k: config_json.get(k) for k in TRAINING_SECTIONS}
    key["train"] = {k: v for k, v in (key["train"] or {}).items() if k != "threads"}
    key["tokenize"] = (key["tokenize"] or {}).get("out")
    ex = config_json.get("experiments") or {}
    if ex.get("bad_batch_steps"):  # simulated bad batches change the numbers too
        key["bad_batches"] = [ex["bad_batch_steps"], ex.get("bad_batch_weight")]
    return key


def _read_records(run_dir: Path) -> tuple[list[dict], list[dict]]:
    val = [r for r in iter_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "val"] \
        if (run_dir / "metrics.jsonl").exists() else []
    events = [e for e in iter_jsonl(run_dir / "events.jsonl") if e.get("event") in GUARD_EVENTS] \
        if (run_dir / "events.jsonl").exists() else []
    return val, events


def run_variant(base: ProjectConfig, variant: Variant, out: Path, threads: int | None = None,
                callbacks: list[Callback] | None = None) -> dict:
    """Train ``variant`` (or reuse its finished result) and return its result record."""
    run_dir = (out / "runs" / variant.name).resolve()
    cfg = variant_config(base, variant, run_dir, threads)
    config_json = cfg.model_dump(mode="json")
    result_path = run_dir / RESULT_FILE
    if result_path.is_file():
        cached = read_json(result_path)
        if _training_key(cached.get("config") or {}) == _training_key(config_json):
            cached.update(name=variant.name, overrides=variant.overrides, cached=True)
            return cached
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished or outdated run of this variant
    recorder = StepRecorder(variant.record_zero_grads)
    extra: list[Callback] = []
    if cfg.experiments.bad_batch_steps:
        extra.append(BadBatches(cfg.experiments.bad_batch_steps, cfg.experiments.bad_batch_weight, cfg.train.seed))
    error = None
    summary: dict = {}
    try:
        summary = train(cfg, resume="never", callbacks=[*extra, recorder, *(callbacks or [])])
    except (TrainingPaused, TrainingStopped) as err:  # a guard stopped or paused it: that is a result too
        error = str(err)
    val, events = _read_records(run_dir)
    result = {
        "name": variant.name,
        "overrides": variant.overrides,
        "config": config_json,
        "steps": recorder.steps,
        "val": val,
        "guard_events": events,
        "error": error,
        "seconds": summary.get("seconds"),
        "tokens_per_s": summary.get("tokens_per_s"),
        "mfu": summary.get("mfu"),
        "final_val_loss": summary.get("final_val_loss", val[-1].get("val_loss") if val else None),
        "global_batch_tokens": cfg.train.global_batch_tokens,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(result_path, result)
    return result


def _run_one(args: tuple) -> dict:
    base_json, variant, out, threads = args
    base = ProjectConfig.model_validate(base_json)
    return run_variant(base, variant, out, threads)


def run_variants(base: ProjectConfig, variants: list[Variant], out: Path, parallel: int = 1) -> list[dict]:
    """Run variants in order, or ``parallel`` at a time in worker processes (threads split between them)."""
    if parallel <= 1 or len(variants) <= 1:
        return [run_variant(base, v, out) for v in variants]
    cores = base.train.threads or os.cpu_count() or 1
    threads = max(1, cores // parallel)
    jobs = [(base.model_dump(mode="json"), v, out, threads) for v in variants]
    with ProcessPoolExecutor(max_workers=parallel, mp_context=get_context("spawn")) as pool:
        return list(pool.map(_run_one, jobs))
