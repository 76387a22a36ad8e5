"""The trainer's hook points: optional behaviour (guards, sinks, eval) plugs in here.

A callback gets the live ``TrainContext`` (train/context.py) and may read anything
on it; returning normally lets the loop continue. Guards, trend rules, MoE
monitoring, in-training eval, multimodal metrics and checkpointing
(train/checkpointer.py) are callbacks, so the loop itself stays small; the
recipe layer (``pretrainlab.recipes``) decides which ones a run gets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pretrainlab.train.context import TrainContext


class Callback:
    # True: this callback reads plain numbers from ``metrics`` every step, so every step waits for the device.
    # Otherwise only log, checkpoint and validation steps do (train/trainer.py ``read_metrics``).
    needs_host_metrics: bool = False

    def on_train_start(self, ctx: "TrainContext") -> None: ...

    def extra_losses(self, ctx: "TrainContext", batch, logits) -> dict:
        """Extra loss terms for this micro-batch, called right after the forward (before backward).

        Returns ``{name: scalar tensor}`` (already weighted); the trainer adds every term to the
        loss it backpropagates and logs each under its name (plus ``ce_loss``); ``loss`` is the total.
        """
        return {}

    def on_after_backward(self, ctx: "TrainContext", metrics: dict) -> None:
        """Gradients are accumulated and clipped, the optimizer has not stepped yet.

        ``metrics`` holds this step's loss and grad_norm; a callback may add keys
        (they are logged) or set ``ctx.skip_step = True`` to skip the update. On a step
        whose metrics are read later they are device tensors: a callback must not turn
        them into numbers (that waits for the device) but may set ``ctx.skip_step`` to a
        device bool tensor, and settle its bookkeeping in ``on_metrics_read``.
        """

    def on_metrics_read(self, ctx: "TrainContext", records: list[dict]) -> None:
        """The step records kept on the device since the last read, now plain numbers (one host sync).

        Called at the start of the next log, checkpoint or validation step (or before a stop), in step order;
        ``records[i]["skipped"]`` says whether that step's update was skipped.
        """

    def on_step_end(self, ctx: "TrainContext", metrics: dict) -> None:
        """After the update (or the skip). Keys added to ``metrics`` are logged."""

    def on_validation(self, ctx: "TrainContext", metrics: dict) -> None:
        """Main rank only, after a validation record was logged."""

    def on_step_boundary(self, ctx: "TrainContext", val: dict | None) -> None:
        """Every rank, once per completed step, after logging, rollback and validation (``val`` when it ran).

        The state matches ``ctx.step`` exactly here: the place to checkpoint or stop.
        """

    def on_checkpoint(self, ctx: "TrainContext", path) -> None: ...

    def on_train_end(self, ctx: "TrainContext") -> None: ...

    def state_dict(self) -> dict:
        """State saved in every checkpoint (JSON-serializable) so a resumed run continues exactly."""
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class CallbackList(Callback):
    def __init__(self, callbacks: list[Callback] | None = None):
        self.callbacks = list(callbacks or [])

    def on_train_start(self, ctx):
        for cb in self.callbacks:
            cb.on_train_start(ctx)

    def extra_losses(self, ctx, batch, logits):
        terms: dict = {}
        for cb in self.callbacks:
            fn = getattr(cb, "extra_losses", None)  # duck-typed callbacks without the hook add nothing
            if fn is not None:
                terms.update(fn(ctx, batch, logits))
        return terms

    @property
    def needs_host_metrics(self) -> bool:
        return any(getattr(cb, "needs_host_metrics", False) for cb in self.callbacks)

    def on_after_backward(self, ctx, metrics):
        for cb in self.callbacks:
            cb.on_after_backward(ctx, metrics)

    def on_metrics_read(self, ctx, records):
        for cb in self.callbacks:
            fn = getattr(cb, "on_metrics_read", None)  # duck-typed callbacks written before this hook
            if fn is not None:
                fn(ctx, records)

    def on_step_end(self, ctx, metrics):
        for cb in self.callbacks:
            cb.on_step_end(ctx, metrics)

    def on_validation(self, ctx, metrics):
        for cb in self.callbacks:
            cb.on_validation(ctx, metrics)

    def on_step_boundary(self, ctx, val):
        for cb in self.callbacks:
            fn = getattr(cb, "on_step_boundary", None)  # duck-typed callbacks written before this hook
            if fn is not None:
                fn(ctx, val)

    def on_checkpoint(self, ctx, path):
        for cb in self.callbacks:
            cb.on_checkpoint(ctx, path)

    def on_train_end(self, ctx):
        for cb in self.callbacks:
            cb.on_train_end(ctx)

    def _keys(self) -> list[str]:
        """Class names (``Name#2`` for a repeat), so adding an unrelated callback keeps keys stable."""
        seen: dict[str, int] = {}
        keys = []
        for cb in self.callbacks:
            name = type(cb).__name__
            seen[name] = seen.get(name, 0) + 1
            keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
        return keys

    def state_dict(self):
        return {k: st for k, cb in zip(self._keys(), self.callbacks) if (st := cb.state_dict())}

    def load_state_dict(self, state):
        for k, cb in zip(self._keys(), self.callbacks):
            if k in state:
                cb.load_state_dict(state[k])
