"""In-training task evaluation: a trainer callback that scores the built-in/configured tasks every N steps.

Enabled by ``eval.every_steps > 0``. On the main rank, at train start it
resolves ``eval.tasks`` (capped at ``eval.in_training_examples`` examples each);
every ``every_steps`` steps (and at the last step) it scores them on the live
model and appends ``{"kind": "eval", "step", "tokens", "acc/<task>",
"acc_norm/<task>", "seconds"}`` to metrics.jsonl (TensorBoard shows them as
``eval/acc/<task>``). Time spent here is not counted against throughput only
if the trainer excludes callbacks; keep the example count small.
"""

from __future__ import annotations

import time

from pretrainlab.eval.suite import resolve_tasks, run_tasks
from pretrainlab.fsio import append_jsonl
from pretrainlab.tokenizer.vocab import load_tokenizer
from pretrainlab.train.callbacks import Callback


class TaskEvalCallback(Callback):
    def __init__(self, every_steps: int):
        self.every = int(every_steps)
        self.tasks = None
        self.tokenizer = None

    def on_train_start(self, ctx) -> None:
        if not ctx.is_main:
            return
        ev = ctx.cfg.eval
        self.tokenizer = load_tokenizer(ctx.cfg.tokenizer_dir)
        tasks = resolve_tasks(ev.tasks, ctx.run_dir, ctx.cfg.train_tokens_dir, self.tokenizer, ev.task_examples, ev.task_seed)
        for t in tasks:
            t.examples = t.examples[: ev.in_training_examples]
        self.tasks = tasks

    def on_step_end(self, ctx, metrics: dict) -> None:
        if not ctx.is_main or not self.tasks:
            return
        if ctx.step % self.every and ctx.step != ctx.cfg.train.steps:
            return
        t0 = time.perf_counter()
        res = run_tasks(ctx.raw_model, self.tokenizer, self.tasks, ctx.cfg.eval.task_batch_size, ctx.device,
                        show_progress=False)
        record = {"kind": "eval", "step": ctx.step, "tokens": ctx.tokens_seen}
        for name, r in res.items():
            record[f"acc/{name}"] = r["acc"]
            record[f"acc_norm/{name}"] = r["acc_norm"]
        record["seconds"] = time.perf_counter() - t0
        sinks = getattr(ctx, "sinks", None)
        if sinks is not None:
            sinks.log(record)
        else:
            append_jsonl(ctx.run_dir / "metrics.jsonl", record)


def eval_callbacks(cfg) -> list[Callback]:
    """The callbacks the eval config asks for (none unless eval.every_steps > 0)."""
    return [TaskEvalCallback(cfg.eval.every_steps)] if cfg.eval.every_steps > 0 and cfg.eval.tasks else []
