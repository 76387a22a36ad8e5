"""`pretrainlab eval`: score a run's checkpoint on held-out data and tasks, and sample from it.

Writes ``<run>/eval.json`` atomically::

    {"run": name, "checkpoint": path, "step": int, "tokens": int|null,
     "seq_len": int, "max_tokens_per_source": int, "device": str,
     "perplexity": {source: {"loss", "ppl", "tokens"[, "skipped"]}, ..., "overall": {...}},
     "tasks": {task: {"acc", "acc_norm", "acc_bytes", "*_stderr", "n", "chance", "path"}},
     "samples": [{"prompt", "prompt_ids", "greedy", "sampled", "greedy_ids", "sampled_ids"}],
     "generation": {"max_new_tokens", "temperature", "top_k", "top_p", "seed"},
     "seconds": float, "time": float}

and appends ``{"time", "step", "event": "eval", "loss", "ppl", "tokens", "checkpoint"}``
to ``<run>/events.jsonl``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pretrainlab.errors import UserError
from pretrainlab.eval.generate import generate
from pretrainlab.eval.perplexity import OVERALL, perplexity_per_source
from pretrainlab.eval.suite import resolve_tasks, run_tasks
from pretrainlab.fsio import append_jsonl, atomic_write_json
from pretrainlab.rundir import load_checkpoint, open_run, run_device
from pretrainlab.tokenizer.vocab import load_tokenizer

EVAL_FILE = "eval.json"


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line; ``\\n`` in a line is a newline) or JSONL with a 'prompt' field."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompts file not found: {path}; pass a text file with one prompt per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; save the prompts file as UTF-8") from None
    prompts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                rec = json.loads(line)
                prompt = rec["prompt"]
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{path}:{n}: expected a JSON object with a 'prompt' string") from None
            if not isinstance(prompt, str):
                raise UserError(f"{path}:{n}: 'prompt' must be a string")
            prompts.append(prompt)
        else:
            prompts.append(line.replace("\\n", "\n"))
    if not prompts:
        raise UserError(f"{path}: no prompts; write one prompt per line")
    return prompts


def sample_prompts(model, tok, prompts: list[str], ev, seed: int) -> list[dict]:
    """Greedy and seeded sampled continuations of each prompt (KV-cached)."""
    samples = []
    for i, prompt in enumerate(prompts):
        ids = tok.encode(prompt) or [tok.bos_id]
        greedy_ids = generate(model, ids, ev.max_new_tokens, greedy=True, eos_id=tok.eos_id)
        gen = torch.Generator(device="cpu").manual_seed(seed + i)
        sampled_ids = generate(
            model, ids, ev.max_new_tokens, temperature=ev.temperature, top_k=ev.top_k, top_p=ev.top_p,
            eos_id=tok.eos_id, generator=gen,
        )
        samples.append({
            "prompt": prompt, "prompt_ids": ids,
            "greedy": tok.decode(greedy_ids), "greedy_ids": greedy_ids,
            "sampled": tok.decode(sampled_ids), "sampled_ids": sampled_ids,
        })
    return samples


def evaluation_inputs(cfg, tok, run_dir: Path, *, samples: bool = True) -> tuple[list, list[str]]:
    """(tasks, prompts) of an evaluation, read and checked before any model work, so a bad file fails at once."""
    ev = cfg.eval
    tasks = resolve_tasks(ev.tasks, run_dir, cfg.train_tokens_dir, tok, ev.task_examples, ev.task_seed)
    prompts = (read_prompts(ev.prompts_file) if ev.prompts_file else list(ev.prompts)) if samples else []
    return tasks, prompts


def evaluate_model(model, cfg, tok, run_dir: Path, device, *, samples: bool = True, tasks=None,
                   prompts: list[str] | None = None) -> dict[str, Any]:
    """Perplexity per source, task accuracies and (optionally) samples of one loaded model."""
    ev = cfg.eval
    if tasks is None or (samples and prompts is None):
        found_tasks, found_prompts = evaluation_inputs(cfg, tok, run_dir, samples=samples)
        tasks = found_tasks if tasks is None else tasks
        prompts = found_prompts if prompts is None else prompts
    seq_len = min(cfg.train.seq_len, model.cfg.max_seq_len)
    ppl = perplexity_per_source(
        model, cfg.train_tokens_dir, seq_len, ev.max_tokens_per_source, cfg.train.micro_batch, device
    )
    task_results = run_tasks(model, tok, tasks, ev.task_batch_size, device)
    out: dict[str, Any] = {"seq_len": seq_len, "perplexity": ppl, "tasks": task_results}
    if samples:
        out["samples"] = sample_prompts(model, tok, prompts, ev, cfg.train.seed)
    return out


def evaluate_run(
    run_dir: str | Path,
    cfg_overrides: list[str] | None = None,
    checkpoint: str | int | None = None,
    *,
    print_results: bool = True,
) -> dict[str, Any]:
    """Evaluate a run's checkpoint (default: the newest complete one); returns what eval.json holds."""
    t0 = time.time()
    run_dir, cfg = open_run(run_dir, cfg_overrides)
    device = run_device(cfg)
    tok = load_tokenizer(cfg.tokenizer_dir)
    tasks, prompts = evaluation_inputs(cfg, tok, run_dir)  # every input checked before the model loads
    ckpt = load_checkpoint(run_dir, checkpoint, device)
    ckpt_path, step, tokens = ckpt.path, ckpt.step, ckpt.tokens
    res = evaluate_model(ckpt.model, cfg, tok, run_dir, device, tasks=tasks, prompts=prompts)

    ev = cfg.eval
    seed = cfg.train.seed
    result = {
        "run": run_dir.resolve().name,
        "checkpoint": str(ckpt_path),
        "step": step,
        "tokens": tokens,
        "max_tokens_per_source": ev.max_tokens_per_source,
        "device": str(device),
        **res,
        "generation": {"max_new_tokens": ev.max_new_tokens, "temperature": ev.temperature,
                       "top_k": ev.top_k, "top_p": ev.top_p, "seed": seed},
        "seconds": round(time.time() - t0, 3),
        "time": time.time(),
    }
    atomic_write_json(run_dir / EVAL_FILE, result)
    overall = result["perplexity"][OVERALL]
    append_jsonl(run_dir / "events.jsonl", {
        "time": time.time(), "step": step if step is not None else -1, "event": "eval",
        "loss": overall["loss"], "ppl": overall["ppl"], "tokens": overall["tokens"],
        **{f"acc/{name}": r["acc"] for name, r in result["tasks"].items()},
        "checkpoint": str(ckpt_path), "seconds": result["seconds"],
    })
    if print_results:
        print_eval(result)
    return result


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_eval(result: dict) -> None:
    """Rich table (source, tokens, loss, ppl) and the samples, on stdout."""
    console = Console(highlight=False)
    table = Table(title=f"{result['run']} @ step {result['step']} ({result['seconds']:.1f}s)")
    table.add_column("source")
    table.add_column("tokens", justify="right")
    table.add_column("loss", justify="right")
    table.add_column("ppl", justify="right")
    for source, r in result["perplexity"].items():
        note = f" [dim]({escape(r['skipped'])})[/]" if r.get("skipped") else ""
        style = "bold" if source == OVERALL else None
        table.add_row(escape(source) + note, f"{r['tokens']:,}", _fmt(r["loss"], ".4f"), _fmt(r["ppl"], ".2f"), style=style)
    console.print(table)
    if result.get("tasks"):
        console.print(task_table(result["tasks"]))
    for s in result.get("samples", []):
        console.print(f"[bold]prompt[/] {escape(repr(s['prompt']))}")
        console.print(f"  [cyan]greedy [/] {escape(repr(s['prompt'] + s['greedy']))}")
        console.print(f"  [magenta]sampled[/] {escape(repr(s['prompt'] + s['sampled']))}")


def task_table(tasks: dict):
    """Rich table of task results: examples, acc, acc_norm (± stderr), chance."""
    table = Table(title="multiple-choice tasks (log-likelihood, lm-eval definitions)")
    for col in ("task", "n", "acc", "acc_norm", "chance"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for name, r in tasks.items():
        pm = lambda k: f"{r[k]:.3f} ± {r[k + '_stderr']:.3f}" if r.get(k) is not None else "-"  # noqa: E731
        table.add_row(escape(name), str(r["n"]), pm("acc"), pm("acc_norm"), _fmt(r.get("chance"), ".3f"))
    return table
