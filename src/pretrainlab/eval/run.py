"""`pretrainlab eval`: score a run's checkpoint on held-out data and sample from it.

Writes ``<run>/eval.json`` atomically::

    {"run": name, "checkpoint": path, "step": int, "tokens": int|null,
     "seq_len": int, "max_tokens_per_source": int, "device": str,
     "perplexity": {source: {"loss", "ppl", "tokens"[, "skipped"]}, ..., "overall": {...}},
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

from pretrainlab.errors import UserError
from pretrainlab.eval.generate import generate
from pretrainlab.eval.perplexity import OVERALL, perplexity_per_source
from pretrainlab.fsio import append_jsonl, atomic_write_json

EVAL_FILE = "eval.json"


def _device(cfg) -> torch.device:
    want = cfg.train.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("train.device is 'cuda' but no CUDA device is available; pass --set train.device=cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def _checkpoint_info(path: Path) -> tuple[int | None, int | None]:
    """(step, tokens seen) from a checkpoint's meta.json / state.json."""
    step = tokens = None
    for name in ("meta.json", "state.json"):
        try:
            data = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            step = step if step is not None else data.get("step")
            tokens = tokens if tokens is not None else data.get("tokens", data.get("tokens_seen"))
    if step is None and path.name.startswith("step_") and path.name[5:].isdigit():
        step = int(path.name[5:])
    return (int(step) if step is not None else None), (int(tokens) if tokens is not None else None)


def _check_run_dir(run_dir: Path) -> None:
    if not run_dir.exists():
        raise UserError(f"run directory not found: {run_dir}; pass runs/<name> made by `pretrainlab train`")
    if not run_dir.is_dir() or not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml); pass runs/<name> made by `pretrainlab train`")


def evaluate_run(
    run_dir: str | Path,
    cfg_overrides: list[str] | None = None,
    checkpoint: str | int | None = None,
    *,
    print_results: bool = True,
) -> dict[str, Any]:
    """Evaluate a run's checkpoint (default: the newest complete one); returns what eval.json holds."""
    from pretrainlab.config import load_config
    from pretrainlab.tokenizer.vocab import load_tokenizer
    from pretrainlab.train.checkpoint import load_model

    t0 = time.time()
    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    cfg = load_config(run_dir / "config.yaml", cfg_overrides or None)
    device = _device(cfg)
    model, _, ckpt_path = load_model(run_dir, checkpoint, device)
    step, tokens = _checkpoint_info(ckpt_path)
    tok = load_tokenizer(cfg.tokenizer_dir)

    seq_len = min(cfg.train.seq_len, model.cfg.max_seq_len)
    ppl = perplexity_per_source(
        model, cfg.train_tokens_dir, seq_len, cfg.eval.max_tokens_per_source, cfg.train.micro_batch, device
    )

    ev = cfg.eval
    seed = cfg.train.seed
    samples = []
    for i, prompt in enumerate(ev.prompts):
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

    result = {
        "run": run_dir.resolve().name,
        "checkpoint": str(ckpt_path),
        "step": step,
        "tokens": tokens,
        "seq_len": seq_len,
        "max_tokens_per_source": ev.max_tokens_per_source,
        "device": str(device),
        "perplexity": ppl,
        "samples": samples,
        "generation": {"max_new_tokens": ev.max_new_tokens, "temperature": ev.temperature,
                       "top_k": ev.top_k, "top_p": ev.top_p, "seed": seed},
        "seconds": round(time.time() - t0, 3),
        "time": time.time(),
    }
    atomic_write_json(run_dir / EVAL_FILE, result)
    overall = ppl[OVERALL]
    append_jsonl(run_dir / "events.jsonl", {
        "time": time.time(), "step": step if step is not None else -1, "event": "eval",
        "loss": overall["loss"], "ppl": overall["ppl"], "tokens": overall["tokens"],
        "checkpoint": str(ckpt_path), "seconds": result["seconds"],
    })
    if print_results:
        print_eval(result)
    return result


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_eval(result: dict) -> None:
    """Rich table (source, tokens, loss, ppl) and the samples, on stdout."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

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
    for s in result["samples"]:
        console.print(f"[bold]prompt[/] {escape(repr(s['prompt']))}")
        console.print(f"  [cyan]greedy [/] {escape(repr(s['prompt'] + s['greedy']))}")
        console.print(f"  [magenta]sampled[/] {escape(repr(s['prompt'] + s['sampled']))}")
