"""What a trainer run hands its callbacks: the live ``TrainContext``, and the ``Recipe`` that chose the parts.

``TrainContext`` is the state of a run (config, model, optimizer, loader, step
counters, requests from guards). ``Recipe`` is what the layer above the trainer
decides for a run: which module to train, which callbacks run, where metrics go,
how validation scores the model and what the hardware's peak is. The trainer
calls these and imports none of the packages behind them
(``pretrainlab.recipes.build_recipe`` assembles the standard one from config).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from pretrainlab.config import ProjectConfig
from pretrainlab.fsio import append_jsonl

if TYPE_CHECKING:
    from pretrainlab.train.callbacks import Callback, CallbackList
    from pretrainlab.train.checkpointer import Checkpointer
    from pretrainlab.train.loader import MixtureLoader


@dataclass
class TrainContext:
    """Live state of a run, handed to callbacks."""

    cfg: ProjectConfig
    run_dir: Path
    model: nn.Module  # what the loop calls: wrapped for data parallelism, compiled, checkpointed
    raw_model: nn.Module  # the unwrapped module the recipe built (a Transformer, or one with extra heads)
    optimizer: torch.optim.Optimizer
    loader: "MixtureLoader"
    device: torch.device
    rank: int = 0
    world: int = 1
    step: int = 0
    tokens_seen: int = 0
    skip_step: bool = False
    checkpointer: "Checkpointer | None" = None  # saves, restores and rolls back (train/checkpointer.py)
    sinks: Any = None  # metrics sinks of the main rank (None elsewhere); callbacks may log through them
    history: list[dict] = field(default_factory=list)
    data_batches: int = 0  # global batches drawn from the loader (steps + batches skipped by rollbacks)
    callbacks: "CallbackList | None" = None
    rollback_request: dict | None = None  # set by a guard: roll back after this step
    pause_request: dict | None = None  # set by a guard: checkpoint and pause after this step
    accum: int = 1  # micro-batches per optimizer step on this rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def request_rollback(self, reason: str, skip_batches: int, resume_at_batch: int | None = None) -> None:
        """Roll back after this step; ``resume_at_batch``: the global batch the data should continue from."""
        self.rollback_request = {"reason": reason, "skip_batches": skip_batches, "resume_at_batch": resume_at_batch}

    def request_pause(self, rule: str, message: str) -> None:
        self.pause_request = {"rule": rule, "message": message}

    def event(self, name: str, **fields) -> None:
        if self.is_main:
            append_jsonl(self.run_dir / "events.jsonl", {"time": time.time(), "step": self.step, "event": name, **fields})


@dataclass
class Recipe:
    """The parts of a run the trainer does not choose itself.

    ``build_model(cfg)`` returns the module to train (on the CPU; the trainer moves,
    wraps and shards it); it is called with torch seeded by ``train.seed``. Its
    ``forward(inputs, targets, doc_ids=...)`` returns ``(logits, loss)`` or
    ``(logits, loss, terms)`` where ``terms`` maps a name to a detached scalar
    already inside ``loss`` (logged each step). ``build_callbacks(ctx, given)``
    returns the run's callbacks, ``given`` (the caller's) included.
    ``build_sinks(ctx)`` gives the main rank's metrics sink (``log(record)``,
    ``close()``); ``validate(ctx)`` a ``{"kind": "val", ...}`` record with
    ``val_loss``; ``peak_flops(cfg, device)`` ``(FLOP/s, how it was obtained)`` for MFU.
    """

    build_model: Callable[[ProjectConfig], nn.Module]
    build_callbacks: Callable[[TrainContext, list["Callback"]], list["Callback"]]
    build_sinks: Callable[[TrainContext], Any]
    validate: Callable[[TrainContext], dict]
    peak_flops: Callable[[ProjectConfig, torch.device], tuple[float, str]]
