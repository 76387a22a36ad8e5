"""AdamW (or SGD with momentum) with decay only on matmul weights, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from pretrainlab.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters: decay 2-D matmul weights; never norms, biases or embeddings.

    A tied output projection is the embedding tensor, so it goes undecayed too. A submodule
    with an ``optim_group`` dict (e.g. the multimodal heads: ``{"lr_scale": ..., "weight_decay": 0.0}``)
    gets a group of its own with those settings; ``lr_scale`` multiplies the scheduled LR.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen, own = [], [], set(), []
    for m in model.modules():
        settings = getattr(m, "optim_group", None)
        if isinstance(settings, dict):
            params = [p for p in m.parameters() if p.requires_grad and id(p) not in seen]
            seen.update(id(p) for p in params)
            if params:
                own.append({"params": params, "weight_decay": weight_decay, **settings})
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        *own,
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        # weight decay here is SGD's (L2 added to the gradient), on the same parameter groups
        return torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
    groups = param_groups(model, cfg.weight_decay)
    opt = torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        # torch's fused kernel: one pass per tensor instead of ~10 element-wise ops (CPU too: 21 -> 6 ms a
        # step for the 4M-parameter benchmark model; benchmarks/train_throughput.py). Not for DTensor
        # (FSDP2) parameters on the CPU: loading a sharded checkpoint or mixing them with expert-parallel
        # slices fails there ("got mixed torch.Tensor and DTensor"); on CUDA only the mix fails (FSDP2
        # sharded params beside expert-parallel slices, which FSDP ignores).
        fused=_fused_ok(groups, device_type),
    )
    # A loaded state carries the saving run's flags; this run's parameters decide whether fusing works.
    opt.register_load_state_dict_pre_hook(_keep_fused_choice)
    return opt


def _keep_fused_choice(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
    for saved, group in zip(state_dict.get("param_groups", []), optimizer.param_groups):
        saved["fused"] = group.get("fused")
    return state_dict


def _fused_ok(groups: list[dict], device_type: str) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        DTensor = ()
    kinds = {isinstance(p, DTensor) for g in groups for p in g["params"]}
    if device_type == "cuda":
        return len(kinds) <= 1
    return device_type == "cpu" and True not in kinds


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """LR for optimizer step ``step`` (0-based): linear warmup, then cosine to min_lr_ratio*lr."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    decay_steps = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr
