"""Simulated corrupted batches: a controlled gradient spike at chosen steps, for the accident suite.

Gradient clipping only matters once a gradient spikes. Small AdamW runs on
clean data hardly produce spikes of their own (measured: removing clipping
changed nothing at 1x-30x the LR), so the suite can place a few: at each step in
``experiments.bad_batch_steps`` the loss gets an extra term, the cross-entropy
of the same inputs against random next tokens (what a shard of garbage bytes
asks of the model) times ``bad_batch_weight``. Its value is added as
``w * (ce - ce.detach())`` = 0, so the logged loss stays the real batch's loss
while the gradient gets the bad batch's pull (measured: 200-300x the median gradient norm).
Every run of a suite sees the same bad batches; the clipped ones cut them to
``optim.grad_clip``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrainlab.train.callbacks import Callback

FIRST_REGULAR_ID = 3  # ids 0-2 are pad/bos/eos: a bad batch asks for ordinary tokens


class BadBatches(Callback):
    def __init__(self, steps: list[int], weight: float, seed: int = 0):
        self.steps, self.weight, self.seed = set(steps), weight, seed

    def extra_losses(self, ctx, batch, logits) -> dict:
        step = ctx.step + 1
        if step not in self.steps:
            return {}
        gen = torch.Generator().manual_seed(self.seed * 100_003 + step)
        vocab = logits.shape[-1]
        bad = torch.randint(min(FIRST_REGULAR_ID, vocab - 1), vocab, tuple(batch.targets.shape), generator=gen)
        ce = F.cross_entropy(logits.float().reshape(-1, vocab), bad.to(logits.device).reshape(-1))
        return {"loss/bad_batch": self.weight * (ce - ce.detach())}

    def on_after_backward(self, ctx, metrics: dict) -> None:
        if ctx.step + 1 in self.steps:
            metrics["bad_batch"] = True
