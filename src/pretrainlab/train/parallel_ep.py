"""Expert parallelism: shard each MoE layer's experts over a process group, all-to-all tokens.

Applied from outside the model (as torchtitan's ``parallelize``): ``apply_expert_parallel``
keeps on each rank only its contiguous slice of every MoE layer's experts and
injects an ``ExpertParallel`` handle as ``layer.ep``. The layer still routes its
own (local) tokens and sorts them by expert; the handle then

1. exchanges per-expert token counts with ``all_to_all_single``,
2. sends each rank the tokens for the experts it owns (the autograd-aware
   functional ``all_to_all_single_autograd``),
3. regroups the received tokens by local expert, runs the local experts,
4. sends the outputs back in the original order (the reverse all-to-all).

Capacity and dropping are decided per source rank before dispatch, from its
local tokens (GShard's "local group" capacity), so an EP layer on each rank
computes exactly what a single-process layer computes on that rank's tokens.

Gradients: each rank's expert weights receive gradient from every EP-group rank's
tokens (the all-to-all's backward), so they must not be all-reduced by data
parallelism (``sharded_expert_params`` lists them) and need their own scaling.

In training (``train.expert_parallel`` = EP size > 1 under torchrun) the world is
a (replicas x EP) device mesh: consecutive ranks form an EP group that shares one
copy of the experts; ranks with the same position in different EP groups hold
the same expert slice (expert replicas). ``ExpertParallelRun`` (built by
``parallelize.parallelize`` from the layout's ``ParallelDims.ep_mesh``) shards the
model, and the loop uses it to

- finish the expert gradients after backward: sum over the expert replicas and
  divide by the world size, which equals data parallelism's mean over ranks of
  the per-rank mean losses (each expert already received the gradient of every
  EP-group rank's tokens through the all-to-all backward);
- clip with the global norm: the replicated parameters' norm (identical on all
  ranks after data-parallel reduction) plus the expert slices' squared norms
  summed over the EP group, so every rank applies the same clip coefficient;
- gather expert slices into full tensors for full checkpoints and slice full
  tensors on load (``gather_expert_state`` / ``slice_expert_state``), or present
  them as DTensor chunks to sharded (DCP) checkpoints (``expert_state_to_dtensors``),
  so a checkpoint is independent of the EP size that wrote it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from pretrainlab.errors import UserError
from pretrainlab.model.moe import MoE, Experts, moe_layers

EXPERT_WEIGHTS = ("w_gate", "w_up", "w_down")


class ExpertParallel:
    """The handle a MoE layer calls to run expert-grouped tokens on the ranks that own the experts."""

    def __init__(self, group: dist.ProcessGroup | None, num_experts: int):
        self.group = group if group is not None else dist.group.WORLD
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        if num_experts % self.size:
            raise ValueError(f"num_experts ({num_experts}) must be divisible by the expert-parallel size ({self.size})")
        self.num_experts = num_experts
        self.num_local = num_experts // self.size
        self.mesh = None  # the (replica, ep) device mesh, when set up for training

    def __call__(self, x: torch.Tensor, counts: torch.Tensor, experts: Experts) -> torch.Tensor:
        from torch.distributed._functional_collectives import all_to_all_single_autograd as a2a

        counts = counts.to(torch.int64)
        recv_counts = torch.empty_like(counts)  # [source rank][local expert]
        dist.all_to_all_single(recv_counts, counts, group=self.group)
        send_splits = counts.view(self.size, self.num_local).sum(1).tolist()
        recv_per = recv_counts.view(self.size, self.num_local)
        recv_splits = recv_per.sum(1).tolist()

        received = a2a(x.contiguous(), recv_splits, send_splits, self.group)
        # Received rows are ordered (source rank, local expert); the experts want them by local expert.
        local_expert = torch.repeat_interleave(
            torch.arange(self.num_local, device=x.device).repeat(self.size), recv_per.reshape(-1)
        )
        order = torch.argsort(local_expert, stable=True)
        y = experts(received[order], recv_per.sum(0))
        unsorted = torch.empty_like(y).index_copy(0, order, y) if y.shape[0] else y
        return a2a(unsorted.contiguous(), send_splits, recv_splits, self.group)


def apply_expert_parallel(model: nn.Module, group: dist.ProcessGroup | None = None) -> int:
    """Shard every MoE layer of ``model`` over ``group``; returns the number of layers sharded.

    Each rank keeps experts [rank*n_local, (rank+1)*n_local) of every layer, so the
    full model's weights must be identical on all ranks when this is called (same
    seed, or loaded from one checkpoint). Training uses ``ExpertParallelRun``,
    which also handles the expert gradients.
    """
    layers = moe_layers(model)
    for _, layer in layers:
        handle = ExpertParallel(group, layer.num_experts)
        lo, hi = handle.rank * handle.num_local, (handle.rank + 1) * handle.num_local
        ex = layer.experts
        for name in EXPERT_WEIGHTS:
            setattr(ex, name, nn.Parameter(getattr(ex, name).detach()[lo:hi].clone()))
        ex.num_experts = handle.num_local
        layer.ep = handle
    return len(layers)


def expert_param_names(model: nn.Module) -> list[str]:
    """Names of the expert-sharded parameters (to exclude from data-parallel all-reduce)."""
    return [name for name, _ in sharded_expert_params(model)]


# --------------------------------------------------------------------------- training


def check_expert_parallel(cfg, world: int) -> None:
    """Refuse an expert-parallel setting the run cannot use, in one line (``UserError``)."""
    ep = cfg.train.expert_parallel
    if ep <= 1:
        return
    if cfg.model.moe is None:
        raise UserError(f"train.expert_parallel={ep} needs a Mixture-of-Experts model; set model.moe.num_experts "
                        "(or train.expert_parallel=1)")
    if world % ep:
        raise UserError(f"train.expert_parallel={ep} must divide the number of processes ({world}); launch with "
                        f"torchrun --nproc_per_node a multiple of {ep}, or set train.expert_parallel=1 for one process")
    if cfg.model.moe.num_experts % ep:
        raise UserError(f"model.moe.num_experts={cfg.model.moe.num_experts} is not divisible by "
                        f"train.expert_parallel={ep}; pick an EP size that divides the number of experts")
    if cfg.eval.every_steps > 0 and cfg.eval.tasks:
        raise UserError(f"in-training task evaluation (eval.every_steps) runs on rank 0 only and cannot drive the "
                        f"expert all-to-all of train.expert_parallel={ep}; set eval.every_steps=0 and evaluate "
                        "checkpoints with `pretrainlab eval`")


class ExpertParallelRun:
    """A sharded model's expert parallelism as the training loop sees it (see the module docstring)."""

    def __init__(self, model: nn.Module, size: int, world: int, device: torch.device, mesh=None):
        """``mesh``: the (replica, ep) ranks (``ParallelDims.ep_mesh``); default: EP groups of consecutive ranks."""
        from torch.distributed.device_mesh import init_device_mesh

        self.size, self.world = size, world
        self.mesh = mesh or init_device_mesh(device.type, (world // size, size), mesh_dim_names=("replica", "ep"))
        self.group = self.mesh.get_group("ep")
        self.replica_group = self.mesh.get_group("replica") if world > size else None
        apply_expert_parallel(model, self.group)
        for _, _, handle in _expert_shards(model):
            handle.mesh = self.mesh  # lets sharded (DCP) checkpoints describe each slice as a DTensor shard
        self.params = [p for _, p in sharded_expert_params(model)]

    def finish_grads(self) -> None:
        """Sum expert gradients over the expert replicas and divide by the world size (call once per step)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if self.replica_group is not None:
            for g in grads:
                dist.all_reduce(g, group=self.replica_group)
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.world)

    def clip_grad_norm_(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        """``clip_grad_norm_`` over all of ``params`` with the expert slices' norms summed over the EP group."""
        from pretrainlab.train.parallel import clip_grads_, grad_norm

        expert_ids = {id(p) for p in self.params}
        dense = [p.grad for p in params if p.grad is not None and id(p) not in expert_ids]
        experts = [p.grad for p in params if p.grad is not None and id(p) in expert_ids]
        dense_norm = grad_norm(dense)  # over FSDP2 / tensor-parallel shards
        device = experts[0].device if experts else dense_norm.device
        expert_sq = (torch.nn.utils.get_total_norm(experts).float() ** 2 if experts
                     else torch.zeros((), device=device))
        dist.all_reduce(expert_sq, group=self.group)
        total = (dense_norm.float().to(device) ** 2 + expert_sq).sqrt()
        clip_grads_(params, max_norm, total)
        return total


def _expert_shards(model: nn.Module):
    """(module name, MoE layer, handle) for every expert-parallel MoE layer, wrappers included in the names."""
    return [(name, m, m.ep) for name, m in model.named_modules()
            if isinstance(m, MoE) and isinstance(m.ep, ExpertParallel)]


def sharded_expert_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every expert slice under expert parallelism (data parallelism must leave them alone)."""
    return [(f"{name}.experts.{w}" if name else f"experts.{w}", getattr(m.experts, w))
            for name, m, _ in _expert_shards(model) for w in EXPERT_WEIGHTS]


def gather_expert_state(model: nn.Module, optimizer: torch.optim.Optimizer, msd: dict, osd: dict, key) -> None:
    """Put full expert tensors (weights and their optimizer moments) into full state dicts, in place.

    Collective over each EP group; call on every rank. ``key`` maps a module
    parameter name to its state-dict key. Ranks whose ``msd`` is empty (not
    the writer) take part in the gather and keep nothing.
    """
    for name, m, handle in _expert_shards(model):
        for w in EXPERT_WEIGHTS:
            p = getattr(m.experts, w)
            k = key(f"{name}.experts.{w}")
            full = _all_gather_cat(p.detach(), handle)
            if msd:
                msd[k] = full.cpu()
            for sname, value in sorted(optimizer.state.get(p, {}).items()):
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    full = _all_gather_cat(value, handle)
                    if osd and k in osd.get("state", {}):
                        osd["state"][k] = {**osd["state"][k], sname: full.cpu()}  # never the optimizer's own dict


def slice_expert_state(model: nn.Module, msd: dict, osd: dict, key) -> tuple[dict, dict]:
    """Full state dicts with each expert tensor cut to this rank's slice (new dicts; the inputs stay whole)."""
    msd = dict(msd)
    osd = {**osd, "state": {k: dict(v) for k, v in osd.get("state", {}).items()}}
    for name, m, handle in _expert_shards(model):
        lo, hi = handle.rank * handle.num_local, (handle.rank + 1) * handle.num_local
        for w in EXPERT_WEIGHTS:
            k = key(f"{name}.experts.{w}")
            if k not in msd:
                continue
            full_shape = msd[k].shape
            if full_shape[0] != handle.num_experts:
                raise UserError(f"checkpoint tensor {k} holds {full_shape[0]} experts but the model has "
                                f"{handle.num_experts}; resume with the model config the run was started with")
            msd[k] = msd[k][lo:hi]
            for sname, value in osd["state"].get(k, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == full_shape:
                    osd["state"][k][sname] = value[lo:hi]
    return msd, osd


def expert_state_to_dtensors(model: nn.Module, state: dict, key) -> None:
    """In a sharded (DCP) state ``{"model": ..., "optim": ...}``, make each expert slice its rank's DTensor shard.

    Plain tensors count as replicated in ``torch.distributed.checkpoint`` (written
    once, by rank 0), which would lose every other rank's experts. As DTensors
    (sharded over the EP mesh dimension, replicated over the expert replicas) they
    are written as chunks of the full tensor, and read back for any other layout.
    The DTensors view the live tensors, so a load fills them in place.
    """
    from torch.distributed.tensor import DTensor, Replicate, Shard

    msd, osd = state["model"], state["optim"]
    for name, m, handle in _expert_shards(model):
        if handle.mesh is None:
            raise UserError("sharded checkpoints of expert-parallel layers need the training mesh "
                            "(ExpertParallelRun); use checkpoint.format=full")
        placements = [Replicate(), Shard(0)]
        for w in EXPERT_WEIGHTS:
            p = getattr(m.experts, w)
            k = key(f"{name}.experts.{w}")
            if k in msd:
                msd[k] = DTensor.from_local(msd[k], handle.mesh, placements, run_check=False)
            if k in osd.get("state", {}):  # a new dict: the optimizer's own per-parameter state must stay as it is
                osd["state"][k] = {sname: DTensor.from_local(v, handle.mesh, placements, run_check=False)
                                   if isinstance(v, torch.Tensor) and not isinstance(v, DTensor) and v.shape == p.shape
                                   else v for sname, v in osd["state"][k].items()}


def expert_state_to_local(state: dict) -> None:
    """Undo ``expert_state_to_dtensors`` after a load (the local slices, which the load filled in place)."""
    from torch.distributed.tensor import DTensor

    def local(v):
        return v.to_local() if isinstance(v, DTensor) and v.device_mesh.mesh_dim_names == ("replica", "ep") else v

    state["model"] = {k: local(v) for k, v in state["model"].items()}
    state["optim"]["state"] = {k: {s: local(v) for s, v in d.items()} for k, d in state["optim"]["state"].items()}


def _all_gather_cat(t: torch.Tensor, handle: ExpertParallel) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(handle.size)]
    dist.all_gather(parts, t.contiguous(), group=handle.group)
    return torch.cat(parts)
