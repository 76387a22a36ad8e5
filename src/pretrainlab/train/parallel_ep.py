"""Expert parallelism: shard each MoE layer's experts over a process group, all-to-all tokens.

Applied from outside the model (as torchtitan's ``parallelize``): ``apply_expert_parallel``
keeps on each rank only its contiguous slice of every MoE layer's experts and
injects an ``ExpertParallel`` handle as ``layer.ep``. The layer still routes its
own (local) tokens and sorts them by expert; the handle then

1. exchanges per-expert token counts with ``all_to_all_single``,
2. sends each rank the tokens for the experts it owns (autograd-aware
   ``torch.distributed.nn.functional.all_to_all_single``),
3. regroups the received tokens by local expert, runs the local experts,
4. sends the outputs back in the original order (the reverse all-to-all).

Capacity and dropping are decided per source rank before dispatch, from its
local tokens (GShard's "local group" capacity), so an EP layer on each rank
computes exactly what a single-process layer computes on that rank's tokens.

Gradients: each rank's expert weights receive gradient from every rank's tokens,
so with a per-rank mean loss the experts' gradients are world-size times a
data-parallel average; ``apply_expert_parallel(..., grad_scale=1/world)`` registers
hooks that divide them, and ``expert_param_names`` lists what data parallelism
must not all-reduce.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from pretrainlab.model.moe import Experts, moe_layers


class ExpertParallel:
    """The handle a MoE layer calls to run expert-grouped tokens on the ranks that own the experts."""

    def __init__(self, group: dist.ProcessGroup | None, num_experts: int):
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        if num_experts % self.size:
            raise ValueError(f"num_experts ({num_experts}) must be divisible by the expert-parallel size ({self.size})")
        self.num_experts = num_experts
        self.num_local = num_experts // self.size

    def __call__(self, x: torch.Tensor, counts: torch.Tensor, experts: Experts) -> torch.Tensor:
        from torch.distributed.nn.functional import all_to_all_single as a2a_autograd

        counts = counts.to(torch.int64)
        recv_counts = torch.empty_like(counts)  # [source rank][local expert]
        dist.all_to_all_single(recv_counts, counts, group=self.group)
        send_splits = counts.view(self.size, self.num_local).sum(1).tolist()
        recv_per = recv_counts.view(self.size, self.num_local)
        recv_splits = recv_per.sum(1).tolist()

        received = x.new_empty(sum(recv_splits), x.shape[1])
        received = a2a_autograd(received, x.contiguous(), recv_splits, send_splits, group=self.group)
        # Received rows are ordered (source rank, local expert); the experts want them by local expert.
        local_expert = torch.repeat_interleave(
            torch.arange(self.num_local, device=x.device).repeat(self.size), recv_per.reshape(-1)
        )
        order = torch.argsort(local_expert, stable=True)
        y = experts(received[order], recv_per.sum(0))
        unsorted = torch.empty_like(y).index_copy(0, order, y) if y.shape[0] else y
        out = y.new_empty(x.shape[0], y.shape[1])
        return a2a_autograd(out, unsorted.contiguous(), send_splits, recv_splits, group=self.group)


def apply_expert_parallel(model: nn.Module, group: dist.ProcessGroup | None = None, grad_scale: float | None = None) -> int:
    """Shard every MoE layer of ``model`` over ``group``; returns the number of layers sharded.

    Each rank keeps experts [rank*n_local, (rank+1)*n_local) of every layer, so the
    full model's weights must be identical on all ranks when this is called (same
    seed, or loaded from one checkpoint). ``grad_scale`` multiplies the expert
    gradients (use 1/world for a per-rank mean loss averaged by data parallelism).
    """
    layers = moe_layers(model)
    for _, layer in layers:
        handle = ExpertParallel(group, layer.num_experts)
        lo, hi = handle.rank * handle.num_local, (handle.rank + 1) * handle.num_local
        ex = layer.experts
        for name in ("w_gate", "w_up", "w_down"):
            local = nn.Parameter(getattr(ex, name).detach()[lo:hi].clone())
            if grad_scale is not None and grad_scale != 1.0:
                local.register_hook(lambda g, s=grad_scale: g * s)
            setattr(ex, name, local)
        ex.num_experts = handle.num_local
        layer.ep = handle
    return len(layers)


def expert_param_names(model: nn.Module) -> list[str]:
    """Names of the expert-sharded parameters (to exclude from data-parallel all-reduce)."""
    return [name for name, _ in model.named_parameters() if ".experts." in f".{name}"]
