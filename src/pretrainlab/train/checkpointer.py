"""Checkpointing as a callback: when to save, what a save holds, and restoring it (resume and rollback).

``Checkpointer`` (after OLMo-core's ``train/callbacks/checkpointer.py``) saves a
first rollback target when the guard is on, then at every ``checkpoint.every``
steps and the last step (``on_step_boundary``), keeping milestone and best
copies; the trainer calls ``save`` directly only when paused or interrupted.
``restore`` is the one way state comes back from disk: on resume and on a guard's
rollback. The file formats live in ``checkpoint.py``; the parallel state
(full / sharded) in ``parallel.py``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch

from pretrainlab.errors import TrainingStopped
from pretrainlab.fsio import append_jsonl, atomic_write_text, iter_jsonl
from pretrainlab.progress import console
from pretrainlab.train import checkpoint as ckpt
from pretrainlab.train.callbacks import Callback
from pretrainlab.train.context import TrainContext
from pretrainlab.train.parallel import (
    full_state,
    load_full_state,
    load_sharded_state,
    sharded_state,
)
from pretrainlab.train.recovery import find_resumable


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def quarantine_future_metrics(run_dir: Path, step: int) -> int:
    """Move metric records past ``step`` into metrics.orphaned.jsonl (after a resume or a rollback)."""
    import json

    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    keep, orphaned = [], []
    for rec in iter_jsonl(path):
        (orphaned if rec.get("step", 0) > step else keep).append(rec)
    if orphaned:
        for rec in orphaned:
            append_jsonl(run_dir / "metrics.orphaned.jsonl", rec)
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    return len(orphaned)


class Checkpointer(Callback):
    """Saves and restores a run's whole state: model, optimizer, data position, RNG, callbacks' state."""

    def __init__(self, ctx: TrainContext):
        cfg = ctx.cfg
        self.format = ckpt.resolve_format(cfg.checkpoint.format, ctx.world, cfg.train.expert_parallel)
        self.group = None
        if ctx.world > 1:  # sharded saves and loads talk on their own gloo group (CPU; never interleaved with training's)
            import torch.distributed as dist

            self.group = dist.new_group(backend="gloo")
        self.saver = None  # the async saver when checkpoint.async_save
        if cfg.checkpoint.async_save:
            self.saver = (ckpt.ShardedAsyncCheckpointer(ctx.rank, self.group) if self.format == "sharded"
                          else ckpt.AsyncCheckpointer())
        self.resumed = False  # set by restore: no rollback target is needed then
        self.last_save_tokens = 0
        self.best_val = float("inf")

    # ------------------------------------------------------------------ hooks

    def on_train_start(self, ctx: TrainContext) -> None:
        if ctx.cfg.guard.enabled and not self.resumed:
            self.save(ctx)  # a rollback target before the first scheduled checkpoint

    def due(self, ctx: TrainContext) -> bool:
        return ctx.step % ctx.cfg.checkpoint.every == 0 or ctx.step == ctx.cfg.train.steps

    def on_step_boundary(self, ctx: TrainContext, val: dict | None) -> None:
        if not self.due(ctx):
            return
        best = None  # best-by-validation among checkpointed steps (no extra saves)
        if val is not None and ctx.cfg.checkpoint.keep_best and (val.get("val_loss") or float("inf")) < self.best_val:
            self.best_val = best = val["val_loss"]
        path = self.save(ctx, best=best)
        ctx.callbacks.on_checkpoint(ctx, path)

    def on_train_end(self, ctx: TrainContext) -> None:
        self.wait()
        if self.saver is not None:
            self.saver.close()  # frees the sharded saver's staging buffers

    # ------------------------------------------------------------------ saving

    def wait(self) -> None:
        """Block until an in-flight async save is complete (before reading or replacing checkpoints)."""
        if self.saver is not None:
            self.saver.wait()

    def before_update(self) -> None:
        """An async save may still be copying the parameters the optimizer is about to change."""
        if self.saver is not None:
            self.saver.wait_staged()

    def save(self, ctx: TrainContext, step_start: dict | None = None, best: float | None = None) -> Path | None:
        """Checkpoint the state after ``ctx.step`` completed steps (collective; None on ranks that write nothing).

        ``step_start`` (loader and RNG state captured when the current step began) is
        used when interrupted mid-step, so the data that step had drawn is replayed.
        """
        if self.format == "sharded":  # every rank writes its own shard: no gather
            weights = sharded_state(ctx.model, ctx.optimizer)
        else:
            weights = full_state(ctx.model, ctx.optimizer)  # collective under FSDP2
            if not ctx.is_main:
                return None
        state = {
            "step": ctx.step,
            "tokens_seen": ctx.tokens_seen,
            "loader": step_start["loader"] if step_start else ctx.loader.state_dict(),
            "data_batches": step_start.get("data_batches", ctx.data_batches) if step_start else ctx.data_batches,
            "callbacks": ctx.callbacks.state_dict() if ctx.callbacks else {},
        }
        rng = step_start["rng"] if step_start else rng_state(ctx.device)
        meta = {"tokens": ctx.tokens_seen, "world_size": ctx.world, "parallel": ctx.cfg.train.parallel}
        after_write = self._after_write(ctx, best)
        return self._write(ctx, weights, rng, state, meta, after_write)

    def _write(self, ctx: TrainContext, weights, rng: dict, state: dict, meta: dict, after_write) -> Path:
        if self.format == "sharded":
            if self.saver is not None:
                return self.saver.save(ctx.run_dir, ctx.step, weights, rng, state, meta,
                                       on_done=after_write if ctx.is_main else None)
            path = ckpt.save_sharded_checkpoint(ctx.run_dir, ctx.step, weights, rng, state, meta,
                                                rank=ctx.rank, group=self.group)
            if ctx.is_main:
                after_write(path)
            return path
        args = (ctx.run_dir, ctx.step, *weights, rng, state, meta)
        if self.saver is not None:
            return self.saver.save(*args, on_done=after_write)
        path = ckpt.save_checkpoint(*args)
        after_write(path)
        return path

    def _after_write(self, ctx: TrainContext, best: float | None):
        """Pruning, milestone and best copies, and the event, once a checkpoint is complete."""
        every = ctx.cfg.checkpoint.milestone_every_tokens
        milestone = bool(every) and ctx.tokens_seen // every > self.last_save_tokens // every
        self.last_save_tokens = tokens = ctx.tokens_seen

        def after_write(path: Path) -> None:
            removed = ckpt.prune_checkpoints(ctx.run_dir, ctx.cfg.checkpoint.keep_last)
            extra = {}
            if milestone:
                extra["milestone"] = str(ckpt.save_milestone(ctx.run_dir, path, (tokens // every) * every))
            if best is not None:
                extra["best"] = str(ckpt.save_best(ctx.run_dir, path, best))
            ctx.event("checkpoint", path=str(path), pruned=[p.name for p in removed], **extra)

        return after_write

    # ------------------------------------------------------------------ restoring

    def restore(self, ctx: TrainContext, path: Path, with_callbacks: bool = False) -> dict:
        """Load a checkpoint of either format into the live run (resharding as needed); returns what was read.

        ``with_callbacks`` (on resume, not on rollback) also restores every callback's state, first:
        a callback may refuse a checkpoint it cannot continue from before any weight is touched.
        """
        self.wait()
        loaded = ckpt.load_checkpoint(path, map_location="cpu")
        if with_callbacks:
            ctx.callbacks.load_state_dict(loaded["state"].get("callbacks", {}))
            self.resumed = True
        ctx.optimizer.zero_grad(set_to_none=True)
        if loaded["format"] == "sharded":
            load_sharded_state(ctx.model, ctx.optimizer, loaded["path"], group=self.group)
        else:
            load_full_state(ctx.model, ctx.optimizer, loaded["model"], loaded["optim"])
        ctx.loader.load_state_dict(loaded["state"]["loader"])
        set_rng_state(loaded["rng"], ctx.device)
        ctx.step = loaded["state"]["step"]
        ctx.tokens_seen = loaded["state"]["tokens_seen"]
        ctx.data_batches = loaded["state"].get("data_batches", ctx.step)
        return loaded

    def rollback(self, ctx: TrainContext, reason: str, skip_batches: int, resume_at_batch: int | None = None) -> dict:
        """Reload the newest complete checkpoint (model, optimizer, data position, RNG), then skip data.

        The guard asks for this after repeated bad steps (PaLM's remedy): the run goes
        back to the checkpoint's step and global batches of data are drawn and
        discarded until ``resume_at_batch`` have been consumed (the guard puts it past
        the bad step's data), or ``skip_batches`` of them when it is not given.
        Metrics logged past the checkpoint move to metrics.orphaned.jsonl. Callback
        state is not reloaded (the guard counts rollbacks).
        """
        self.wait()
        found = find_resumable(ctx.run_dir, ctx.rank, ctx.world, self.group)  # a damaged newest one is set aside
        for skipped in found.skipped:
            ctx.event("checkpoint_skipped", **skipped.event())
            console.print(f"[yellow]rollback[/]: {skipped.line()}")
        path = found.path
        if path is None:
            raise TrainingStopped(f"{ctx.run_dir}: a rollback was needed ({reason}) but no complete checkpoint exists; "
                                  "lower optim.lr or checkpoint.every and start again")
        from_step = ctx.step
        loaded = self.restore(ctx, path)
        first = ctx.data_batches + 1  # global batches are numbered from 1 in the order drawn
        skip_batches = skip_batches if resume_at_batch is None else max(0, resume_at_batch - ctx.data_batches)
        for _ in range(skip_batches * ctx.accum):
            ctx.loader.next_batch()
        ctx.data_batches += skip_batches
        ctx.history = [m for m in ctx.history if m.get("step", 0) <= ctx.step]
        orphaned = quarantine_future_metrics(ctx.run_dir, ctx.step) if ctx.is_main else 0
        lost_s = max(0.0, time.time() - loaded["meta"].get("saved_at", time.time()))
        info = {"checkpoint": str(path), "from_step": from_step, "to_step": ctx.step, "skipped_batches": skip_batches,
                "skipped_data_batches": [first, ctx.data_batches] if skip_batches else [],
                "data_batches": ctx.data_batches, "reason": reason, "lost_s": lost_s, "orphaned_metric_records": orphaned}
        ctx.event("rollback", **info)
        skipped = f"skipped data batches {first}-{ctx.data_batches}" if skip_batches else "no data skipped"
        console.print(f"[yellow]rollback[/]: {reason}; back to {path.name}, {skipped}")
        return info
