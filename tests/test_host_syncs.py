"""No host syncs in a training step: the loss, grad norm and guard decisions stay on the device between reads.

Only log, checkpoint and validation steps (and the last) read the step's numbers, with one
``.tolist()`` over every unread record (torchtitan reads its metrics once per log step). On
the CPU a "sync" is a tensor turned into Python numbers: the test counts calls of
``Tensor.item`` / ``.tolist`` / ``.cpu`` / ``.numpy`` / ``float()`` / ``int()`` / ``bool()``
on floating-point and bool tensors (the loader's integer batches are host data already), made
by the training loop and its callbacks. Not counted: the model's own forward (on the CPU its
fp32 fused head checks a rare underflow on the host; a GPU trains in bf16 through plain
cross-entropy) and validation (a read step's work). tests/test_cuda.py checks a whole bf16
step on a GPU with ``torch.cuda.set_sync_debug_mode``, model included.
"""

from __future__ import annotations

import math
import traceback

import pytest
import torch

from pretrainlab.fsio import iter_jsonl
from pretrainlab.recipes import train
from pretrainlab.train.callbacks import Callback

SYNCING = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")
NOT_COUNTED = ("/pretrainlab/model/", "/pretrainlab/eval/")
HOST_STEPS = {4, 6, 8, 12}  # log_every=4, checkpoint.every=6, val_every=6, steps=12
SETTINGS = ("train.steps=12", "train.log_every=4", "checkpoint.every=6", "train.val_every=6")


class SyncCounter(Callback):
    """Counts syncing calls per step: from one step boundary to the next."""

    def __init__(self, monkeypatch):
        self.count, self.per_step, self.where, self.stacks = 0, {}, {}, []
        self._mark = 0
        for name in SYNCING:
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))

    def _counting(self, original):
        def call(tensor, *args, **kwargs):
            if (tensor.is_floating_point() or tensor.dtype == torch.bool) and not any(
                    part in frame.filename for frame in traceback.extract_stack(limit=16) for part in NOT_COUNTED):
                self.count += 1
                self.stacks.append("".join(traceback.format_stack(limit=5)[:-1]))
            return original(tensor, *args, **kwargs)

        return call

    def on_train_start(self, ctx):
        self._mark = self.count

    def on_step_boundary(self, ctx, val):
        self.per_step[ctx.step] = self.count - self._mark
        self.where[ctx.step], self.stacks = self.stacks, []
        self._mark = self.count


class PoisonGrads(Callback):
    """A NaN gradient at chosen steps, left on the device (the loss and grad norm stay tensors)."""

    def __init__(self, steps):
        self.steps, self.before, self.after = set(steps), {}, {}

    def on_after_backward(self, ctx, metrics):
        if metrics["step"] in self.steps:
            for p in ctx.raw_model.parameters():
                p.grad.fill_(math.nan)
            metrics["grad_norm"] = torch.full_like(metrics["grad_norm"], math.nan)
            self.before[metrics["step"]] = [p.detach().clone() for p in ctx.raw_model.parameters()]

    def on_step_end(self, ctx, metrics):
        if metrics["step"] in self.steps:
            self.after[metrics["step"]] = [p.detach().clone() for p in ctx.raw_model.parameters()]


@pytest.mark.parametrize("model", [(), ("model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.expert_hidden=48")],
                         ids=["dense", "moe"])
def test_only_log_checkpoint_and_validation_steps_read_the_device(tiny_cfg, monkeypatch, model):
    counter = SyncCounter(monkeypatch)
    summary = train(tiny_cfg(*SETTINGS, *model), callbacks=[counter])
    syncing = {step: n for step, n in counter.per_step.items() if n and step not in HOST_STEPS}
    assert not syncing, f"steps that waited for the device: {syncing}\n" + "\n----\n".join(
        counter.where[min(syncing)])
    assert all(counter.per_step[s] > 0 for s in HOST_STEPS)  # the counter sees the reads it should
    assert len(summary["losses"]) == 12 and all(isinstance(v, float) for v in summary["losses"])


def test_a_nonfinite_step_between_reads_is_skipped_on_the_device_and_recorded_at_the_next_read(tiny_cfg, monkeypatch):
    counter, poison = SyncCounter(monkeypatch), PoisonGrads([5])
    cfg = tiny_cfg(*SETTINGS)
    summary = train(cfg, callbacks=[poison, counter])
    assert counter.per_step[5] == 0  # decided and skipped without waiting for the device
    assert all(torch.equal(a, b) for a, b in zip(poison.before[5], poison.after[5]))  # the update did not happen
    skips = [e for e in iter_jsonl(cfg.run_dir / "events.jsonl") if e["event"] == "skip_step"]
    assert [(e["step"], e["reason"]) for e in skips] == [(5, "nonfinite")]
    assert len(summary["losses"]) == 12 and math.isfinite(summary["losses"][-1])


@pytest.mark.parametrize("log_every", [5])
def test_reading_later_trains_exactly_like_reading_every_step(tiny_cfg, log_every):
    base = train(tiny_cfg(*SETTINGS[:1], "train.log_every=1", "run.name=every"))["losses"]
    later = train(tiny_cfg(*SETTINGS[:1], f"train.log_every={log_every}", f"run.dir={tiny_cfg().run_dir}-{log_every}"))
    assert later["losses"] == base
