"""FP8 training through torchao's float8: swap the model's linear layers, from outside the model.

``train.fp8: true`` converts every ``nn.Linear`` whose name has no component in
``train.fp8_skip`` (default: the output projection ``lm_head`` and the MoE
``router``) into torchao's ``Float8Linear``: its matmuls run in float8 (e4m3
forward, dynamic scales per row or per tensor, ``train.fp8_scaling``) while the
weights, the optimizer and everything else stay as they were, so checkpoints
keep the same names and shapes. Layers whose dimensions are not multiples of 16
stay in high precision (the FP8 matmul needs them). MoE experts are stacked
tensors, not linears, and keep their grouped bf16 GEMMs.

As in torchtitan, the conversion happens before activation checkpointing,
compile and FSDP2 (``parallel.apply_block_wrappers``). FP8 matmuls need a CUDA GPU of
compute capability 8.9 or newer (Ada, Hopper, Blackwell); elsewhere the run is
refused with one line before anything is built.
"""

from __future__ import annotations

import torch
from torch import nn

from pretrainlab.errors import UserError

MIN_CAPABILITY = (8, 9)


def fp8_unsupported_reason(device: torch.device) -> str | None:
    """Why FP8 training cannot run on ``device`` (None when it can)."""
    if device.type != "cuda":
        return f"train.fp8 needs a CUDA GPU with FP8 matmuls (compute capability >= 8.9), but training runs on {device.type}"
    cap = torch.cuda.get_device_capability(device)
    if tuple(cap) < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return (f"train.fp8 needs compute capability >= 8.9 (Ada, Hopper or newer); {name} has "
                f"{cap[0]}.{cap[1]}")
    return None


def check_fp8(device: torch.device) -> None:
    """Raise a one-line ``UserError`` unless ``device`` can train in FP8 and torchao is installed."""
    reason = fp8_unsupported_reason(device)
    if reason is not None:
        raise UserError(f"{reason}; set train.fp8=false")
    try:
        import torchao.float8  # noqa: F401
    except ImportError as err:
        raise UserError(f"train.fp8 needs torchao ({err}); install it with pip install 'pretrainlab[fp8]'") from err


def fp8_filter(skip: list[str]):
    """torchao's ``module_filter_fn``: a linear converts unless a name component is in ``skip`` or a dim isn't /16."""
    skipped = set(skip)

    def keep(module: nn.Module, fqn: str) -> bool:
        if not isinstance(module, nn.Linear):
            return True  # containers: torchao recurses into them
        if skipped.intersection(fqn.split(".")):
            return False
        return module.in_features % 16 == 0 and module.out_features % 16 == 0

    return keep


def convert_to_fp8(model: nn.Module, scaling: str = "rowwise", skip: list[str] | None = None) -> list[str]:
    """Swap ``model``'s eligible linears for torchao ``Float8Linear`` in place; returns the converted names.

    Works on any device (the swap is a module change); the matmuls themselves need ``check_fp8``'s hardware.
    """
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    config = Float8LinearConfig.from_recipe_name(scaling)
    convert_to_float8_training(model, config=config, module_filter_fn=fp8_filter(list(skip or [])))
    from torchao.float8.float8_linear import Float8Linear

    return [name for name, m in model.named_modules() if isinstance(m, Float8Linear)]


def apply_fp8(model: nn.Module, train_cfg, device: torch.device) -> list[str]:
    """``train.fp8``: check the hardware, then convert per ``train.fp8_scaling`` / ``train.fp8_skip``."""
    check_fp8(device)
    if train_cfg.precision == "fp16":
        raise UserError("train.fp8 runs with precision bf16 (or fp32), not fp16; set train.precision=bf16")
    return convert_to_fp8(model, train_cfg.fp8_scaling, train_cfg.fp8_skip)
