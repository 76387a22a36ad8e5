"""What the built-in tasks add to `pretrainlab eval` on the quickstart model, next to held-out perplexity.

Builds the quickstart-shaped model (untrained: the cost depends on shapes, not
weights) over an existing quickstart workdir's tokenizer and token shards, then
times, in the same process: (peer) per-source held-out perplexity as `eval`
computes it, built-in task generation, and scoring of every task choice.

    .venv/bin/python benchmarks/bench_eval_tasks.py --workdir work   # after `make quickstart` (or its data stages)
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from pretrainlab.config import load_config
from pretrainlab.eval.perplexity import perplexity_per_source
from pretrainlab.eval.suite import ensure_builtin_tasks, resolve_tasks, run_tasks
from pretrainlab.model.transformer import Transformer
from pretrainlab.tokenizer.vocab import load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="work")
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [f"workdir={args.workdir}"])
    tok = load_tokenizer(cfg.tokenizer_dir)
    mcfg = cfg.model.model_copy(update={"vocab_size": tok.vocab_size})
    torch.manual_seed(0)
    model = Transformer(mcfg).eval()
    ev = cfg.eval

    t0 = time.perf_counter()
    ppl = perplexity_per_source(model, cfg.train_tokens_dir, cfg.train.seq_len, ev.max_tokens_per_source,
                                cfg.train.micro_batch, "cpu")
    t_ppl = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as run_dir:
        t0 = time.perf_counter()
        ensure_builtin_tasks(run_dir, cfg.train_tokens_dir, tok, ev.task_examples, ev.task_seed)
        t_gen = time.perf_counter() - t0
        tasks = resolve_tasks(ev.tasks, run_dir, cfg.train_tokens_dir, tok, ev.task_examples, ev.task_seed)
        t0 = time.perf_counter()
        res = run_tasks(model, tok, tasks, ev.task_batch_size, "cpu", show_progress=False)
        t_score = time.perf_counter() - t0
    choices = sum(len(e.choices) for t in tasks for e in t.examples)
    print(f"model {sum(p.numel() for p in model.parameters()):,} params, threads {args.threads}")
    print(f"peer: held-out perplexity ({ppl['overall']['tokens']:,} tokens): {t_ppl:.2f} s")
    print(f"built-in task generation: {t_gen:.2f} s")
    counts = ", ".join(f"{k} n={v['n']}" for k, v in res.items())
    print(f"task scoring ({counts}; {choices} choices): {t_score:.2f} s")
    print(f"tasks add {t_gen + t_score:.2f} s = {(t_gen + t_score) / t_ppl:.2f}x the perplexity pass")


if __name__ == "__main__":
    main()
