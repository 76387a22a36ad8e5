"""Parallelism applied from outside the model: process groups, DDP or FSDP2, activation checkpointing, compile.

The model code knows nothing of this module. ``apply_block_wrappers`` and
``apply_data_parallel`` are the last steps of ``parallelize.parallelize``, which
turns a plain Transformer into what the loop calls. Checkpoint state comes from
``torch.distributed.checkpoint.state_dict`` in one of two forms: full (unsharded)
state dicts gathered to rank 0 (``full_state`` / ``load_full_state``) or each
rank's own shard, written and resharded by DCP (``sharded_state`` /
``load_sharded_state``); either way a run saved on N processes resumes on M. Under expert parallelism
(``train.expert_parallel``, see ``parallel_ep``) the expert slices are left out of data parallelism and
gathered into full tensors in checkpoints, so the EP size may change on resume too.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from pretrainlab.config import ProjectConfig


def init_distributed(device: str = "auto") -> tuple[int, int, int]:
    """(rank, world size, local rank); initializes the default process group under torchrun.

    ``device`` is ``train.device``: nccl only when training runs on CUDA, gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend=backend_for(device))
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def backend_for(device: str) -> str:
    """The process-group backend for ``train.device`` (auto | cpu | cuda): nccl moves CUDA tensors only."""
    return "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"


def blocks(model: nn.Module) -> list[tuple[int | str, nn.Module]]:
    """(key, block) of a model's decoder blocks: a ModuleList, or a pipeline stage's ModuleDict."""
    layers = model.layers
    return list(layers.items()) if isinstance(layers, nn.ModuleDict) else list(enumerate(layers))


def _checkpoint_blocks(model: nn.Module) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i, block in blocks(model):
        model.layers[i] = checkpoint_wrapper(block)


def apply_block_wrappers(model: nn.Module, tc, device: torch.device) -> None:
    """FP8 linears, activation checkpointing and compile, per decoder block (after tensor parallelism)."""
    if tc.fp8:  # first, as torchtitan does: the swapped linears are what checkpointing/compile/FSDP2 see
        from pretrainlab.train.fp8 import apply_fp8

        apply_fp8(model, tc, device)
    if tc.activation_checkpointing:
        _checkpoint_blocks(model)
    if tc.compile:
        for i, block in blocks(model):
            model.layers[i] = torch.compile(block)


def data_parallel_mesh(dims, mesh):
    """FSDP2's mesh: the shard dimension (with context-parallel ranks folded in, as torchtitan's dp_shard_cp:
    they hold the same weights and average their gradients), plus the replicate dimension for HSDP."""
    shard = "dp_shard"
    if dims.cp > 1:
        mesh["dp_shard", "cp"]._flatten("dp_shard_cp")  # registers the flattened dimension on the root mesh
        shard = "dp_shard_cp"
    return mesh[shard] if dims.dp_replicate == 1 else mesh["dp_replicate", shard]


def apply_data_parallel(model: nn.Module, tc, dims, mesh, device: torch.device, local_rank: int) -> nn.Module:
    """DDP for plain replication, else FSDP2 on the mesh's data dimensions (HSDP when both are > 1)."""
    from pretrainlab.train.parallel_ep import sharded_expert_params

    if dims.world <= 1 or (dims.dp <= 1 and dims.cp <= 1):
        return model
    experts = sharded_expert_params(model)  # expert-parallel slices: reduced by ExpertParallelRun, not here
    if dims.fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if tc.precision == "bf16" else MixedPrecisionPolicy()
        dp_mesh = data_parallel_mesh(dims, mesh)
        ids = {id(p) for _, p in experts}
        for _, block in blocks(model):
            fully_shard(block, mesh=dp_mesh, mp_policy=mp,
                        ignored_params={p for p in block.parameters() if id(p) in ids} or None)
        fully_shard(model, mesh=dp_mesh, mp_policy=mp, ignored_params={p for _, p in experts} or None)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    if experts:
        DDP._set_params_and_buffers_to_ignore_for_model(model, [name for name, _ in experts])
    return DDP(model, device_ids=[local_rank] if device.type == "cuda" else None)


def grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all ``grads`` as a plain tensor, whatever meshes their DTensor shards live on.

    ``get_total_norm`` stacks per-tensor norms, which needs one mesh; a tensor-parallel model under FSDP2
    mixes (dp, tp) DTensors with dp-only ones (parameters TP leaves whole), so each mesh is summed apart.
    """
    from torch.distributed.tensor import DTensor

    if not grads:
        return torch.zeros(())
    groups: dict = {}
    for g in grads:
        groups.setdefault(g.device_mesh if isinstance(g, DTensor) else None, []).append(g)
    squares = []
    for part in groups.values():
        norm = torch.nn.utils.get_total_norm(part)
        squares.append((norm.full_tensor() if isinstance(norm, DTensor) else norm).float() ** 2)
    return torch.stack([s.to(squares[0].device) for s in squares]).sum().sqrt()


def clip_grads_(params: list[nn.Parameter], max_norm: float, total: torch.Tensor) -> None:
    """Scale the gradients of ``params`` by ``max_norm / total`` (when below 1), one mesh at a time."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.experimental import implicit_replication

    groups: dict = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault(p.grad.device_mesh if isinstance(p.grad, DTensor) else None, []).append(p)
    with implicit_replication():  # DTensor gradients times a plain coefficient
        for part in groups.values():
            torch.nn.utils.clip_grads_with_norm_(part, max_norm, total)


def autocast_context(cfg: ProjectConfig, device: torch.device, world: int):
    """bf16/fp16 autocast, unless FSDP2's mixed-precision policy already casts parameters (bf16)."""
    from pretrainlab.train.mesh import resolve_dims

    fsdp = world > 1 and resolve_dims(cfg, world, check_device=False).fsdp  # FSDP2 wraps every layout but plain DDP
    if cfg.train.precision == "fp32" or (cfg.train.precision == "bf16" and fsdp):
        return nullcontext()
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_sync_context(model: nn.Module, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    if hasattr(model, "no_sync"):  # DDP
        return nullcontext() if sync else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
    return nullcontext()


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _unwrap_key(key: str) -> str:
    # checkpoint_wrapper / torch.compile add prefixes; checkpoints use the plain model's names.
    for prefix in ("_checkpoint_wrapped_module.", "_orig_mod."):
        key = key.replace(prefix, "")
    return key


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state (collective under FSDP2 and EP; on CPU; full on rank 0)."""
    from pretrainlab.train.parallel_ep import gather_expert_state

    inner = model.module if hasattr(model, "no_sync") else model
    msd, osd = get_state_dict(inner, optimizer, options=_FULL)
    if osd:  # ranks other than 0 receive empty dicts under cpu_offload
        msd = {_unwrap_key(k): v for k, v in msd.items()}
        osd = {"state": {_unwrap_key(k): v for k, v in osd["state"].items()},
               "param_groups": [{**g, "params": [_unwrap_key(p) for p in g["params"]]} for g in osd["param_groups"]]}
    gather_expert_state(inner, optimizer, msd, osd, _unwrap_key)  # no-op without expert parallelism
    return msd, osd


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, msd: dict, osd: dict) -> None:
    """Load full state dicts into a (possibly sharded / wrapped) model and its optimizer."""
    from pretrainlab.train.parallel_ep import slice_expert_state

    inner = model.module if hasattr(model, "no_sync") else model
    msd, osd = slice_expert_state(inner, msd, osd, _unwrap_key)  # each EP rank keeps its experts' slice
    names = {_unwrap_key(k): k for k in inner.state_dict()}
    msd = {names.get(k, k): v for k, v in msd.items()}
    osd = {"state": {names.get(k, k): v for k, v in osd["state"].items()},
           "param_groups": [{**g, "params": [names.get(p, p) for p in g["params"]]} for g in osd["param_groups"]]}
    set_state_dict(inner, optimizer, model_state_dict=msd, optim_state_dict=osd,
                   options=StateDictOptions(full_state_dict=True))


def _rename(msd: dict, osd: dict, name) -> tuple[dict, dict]:
    return ({name(k): v for k, v in msd.items()},
            {"state": {name(k): v for k, v in osd["state"].items()},
             "param_groups": [{**g, "params": [name(p) for p in g["params"]]} for g in osd["param_groups"]]})


def sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """This rank's shard of model and optimizer state (DTensors under FSDP2), keyed by the plain model's names.

    No collective and no copy: the tensors are the live ones, which is what
    ``dcp.save`` writes (each rank its own slices; DDP's replicas are written once)
    and what ``dcp.load`` fills in place.
    """
    from pretrainlab.train.parallel_ep import expert_state_to_dtensors

    inner = model.module if hasattr(model, "no_sync") else model
    msd, osd = get_state_dict(inner, optimizer)
    msd, osd = _rename(msd, osd, _unwrap_key)
    state = {"model": msd, "optim": osd}
    expert_state_to_dtensors(inner, state, _unwrap_key)  # expert-parallel slices: chunks of the full tensors
    return state


def load_sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer, path, group=None) -> None:
    """Load a sharded (DCP) checkpoint into a model and optimizer of any world size / parallelism (collective)."""
    from pretrainlab.train.checkpoint import load_sharded_into
    from pretrainlab.train.parallel_ep import expert_state_to_local

    inner = model.module if hasattr(model, "no_sync") else model
    state = sharded_state(model, optimizer)  # the local layout to fill; DCP reads just the slices it needs
    load_sharded_into(path, state, group=group)
    expert_state_to_local(state)
    names = {_unwrap_key(k): k for k in inner.state_dict()}
    msd, osd = _rename(state["model"], state["optim"], lambda k: names.get(k, k))
    set_state_dict(inner, optimizer, model_state_dict=msd, optim_state_dict=osd)
