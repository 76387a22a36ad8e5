"""`pretrainlab train --dry-run`: build the model on the meta device and report its size and cost.

No parameter memory is allocated, so a 10B config can be checked on a laptop:
parameter counts (from the real module), FLOPs per token, the batch geometry the
trainer would derive, and the planner's per-device memory estimate.
"""

from __future__ import annotations

import os

import torch
from rich.table import Table

from pretrainlab.config import ProjectConfig
from pretrainlab.errors import UserError
from pretrainlab.model.transformer import Transformer, count_params, flops_per_token
from pretrainlab.progress import console


def _vocab_size(cfg: ProjectConfig) -> tuple[int, str]:
    if cfg.model.vocab_size:
        return cfg.model.vocab_size, "model.vocab_size"
    try:
        from pretrainlab.tokenizer.vocab import load_tokenizer

        return load_tokenizer(cfg.tokenize_tokenizer_dir).vocab_size, f"tokenizer {cfg.tokenize_tokenizer_dir}"
    except UserError:
        return cfg.tokenizer.vocab_size, "tokenizer.vocab_size (no trained tokenizer yet)"


def dry_run(cfg: ProjectConfig, world: int | None = None) -> dict:
    world = world or int(os.environ.get("WORLD_SIZE", "1"))
    vocab, vocab_source = _vocab_size(cfg)
    model_cfg = cfg.model.model_copy(update={"vocab_size": vocab, "max_seq_len": max(cfg.model.max_seq_len, cfg.train.seq_len)})
    with torch.device("meta"):
        model = Transformer(model_cfg)
    module_params = sum(p.numel() for p in model.parameters())
    counts = count_params(model_cfg)
    tc = cfg.train
    rows = tc.global_batch_tokens // tc.seq_len
    per_step = tc.micro_batch * world
    accum = rows // per_step if rows % per_step == 0 else None
    result = {
        "vocab_size": vocab,
        "vocab_source": vocab_source,
        "params_total": module_params,
        "params_non_embedding": counts["non_embedding"],
        "params_active": counts.get("active", module_params),
        "flops_per_token": flops_per_token(model_cfg, tc.seq_len),
        "world_size": world,
        "grad_accum": accum,
        "tokens_total": tc.steps * tc.global_batch_tokens,
    }
    # The planner sees the run as launched: this many devices, FSDP2 = ZeRO stage 3 (unless the plan
    # section says otherwise explicitly).
    plan_update = {}
    if cfg.plan.devices is None:
        plan_update["devices"] = world
    if "zero_stage" not in cfg.plan.model_fields_set and tc.parallel == "fsdp2" and world > 1:
        plan_update["zero_stage"] = 3
    if "expert_parallel" not in cfg.plan.model_fields_set and tc.expert_parallel > 1:
        plan_update["expert_parallel"] = tc.expert_parallel
    plan_cfg = cfg.model_copy(update={"model": model_cfg, "plan": cfg.plan.model_copy(update=plan_update)})
    try:
        from pretrainlab.plan.planner import make_plan

        mem = make_plan(plan_cfg)["memory"]
        result["memory_per_device_bytes"] = mem.get("total_bytes")
        result["memory_fits"] = mem.get("fits")
        result["memory_detail"] = {k: mem.get(k) for k in ("model_states_bytes", "activations_bytes", "device_bytes")}
    except UserError as err:
        result["memory_error"] = str(err)

    table = Table(title=f"dry run: {cfg.run.name} (meta device, nothing allocated)")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("vocabulary", f"{vocab:,} ({vocab_source})")
    table.add_row("parameters", f"{module_params:,}")
    table.add_row("non-embedding parameters", f"{counts['non_embedding']:,}")
    if "active" in counts and counts["active"] != module_params:
        table.add_row("active parameters per token", f"{counts['active']:,}")
    table.add_row("FLOPs / token (6N + attention)", f"{result['flops_per_token'] / 1e9:.3f} G")
    table.add_row("tokens / step", f"{tc.global_batch_tokens:,}")
    table.add_row("world size / grad accumulation", f"{world} / {accum if accum else 'does not divide'}")
    table.add_row("total tokens", f"{result['tokens_total'] / 1e9:.2f} B")
    table.add_row("training FLOPs", f"{result['flops_per_token'] * result['tokens_total']:.3e}")
    if "memory_per_device_bytes" in result:
        table.add_row("memory per device (planner)", f"{result['memory_per_device_bytes'] / 2**30:.1f} GiB "
                      f"({'fits' if result['memory_fits'] else 'does NOT fit'}; details: pretrainlab plan)")
    console.print(table)
    if accum is None:
        raise UserError(
            f"train.global_batch_tokens={tc.global_batch_tokens} is not divisible by micro_batch*seq_len*world "
            f"({tc.micro_batch}*{tc.seq_len}*{world}); adjust it or train.micro_batch"
        )
    return result
