"""Measured per-rank model-state bytes of a distributed run, next to what the planner predicts for its layout.

After the first optimizer step (AdamW creates its moments lazily) every rank counts
the bytes of the parameters it holds (its FSDP2 shard, tensor-parallel slice,
pipeline stages, expert slices) and of its optimizer state; the main rank logs
them with the planner's ``weights_bytes`` / ``optimizer_bytes`` for the same
layout as a ``rank_memory`` event, so the plan can be checked against the run.
"""

from __future__ import annotations

import torch
from torch import nn

from pretrainlab.errors import UserError
from pretrainlab.train.callbacks import Callback
from pretrainlab.train.context import TrainContext


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def rank_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of this rank's parameters and optimizer state (local shards only)."""
    params = {id(p): p for p in model.parameters()}.values()  # tied weights once
    weights = sum(_local(p).numel() * p.element_size() for p in params)
    moments = sum(_local(v).numel() * v.element_size() for state in optimizer.state.values()
                  for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
    return {"params": sum(_local(p).numel() for p in params), "weights_bytes": weights, "optimizer_bytes": moments}


class RankMemoryProbe(Callback):
    """Logs the ``rank_memory`` event once, after the first step (collective: every rank reports)."""

    def __init__(self) -> None:
        self.done = False

    def on_step_end(self, ctx: TrainContext, metrics: dict) -> None:
        if self.done:
            return
        self.done = True
        import torch.distributed as dist

        ranks = [None] * ctx.world
        dist.all_gather_object(ranks, rank_state_bytes(ctx.raw_model, ctx.optimizer))
        if ctx.is_main:
            ctx.event("rank_memory", measured=ranks, planned=_planned(ctx))


def _planned(ctx: TrainContext) -> dict | None:
    from pretrainlab.train.dry_run import planned_memory
    from pretrainlab.train.mesh import resolve_dims

    try:
        mem = planned_memory(ctx.cfg, resolve_dims(ctx.cfg, ctx.world, check_device=False))
    except UserError as err:  # e.g. an architecture the planner cannot size: the measurement still stands
        return {"error": str(err)}
    return {k: mem[k] for k in ("params_per_device", "weights_bytes", "optimizer_bytes")}


def build_memory_probe(ctx: TrainContext) -> list[Callback]:
    return [RankMemoryProbe()] if ctx.world > 1 else []
