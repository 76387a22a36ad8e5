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
from pretrainlab.train.mesh import ParallelDims, resolve_dims


def _vocab_size(cfg: ProjectConfig) -> tuple[int, str]:
    if cfg.model.vocab_size:
        return cfg.model.vocab_size, "model.vocab_size"
    try:
        from pretrainlab.tokenizer.vocab import load_tokenizer

        return load_tokenizer(cfg.tokenize_tokenizer_dir).vocab_size, f"tokenizer {cfg.tokenize_tokenizer_dir}"
    except UserError:
        return cfg.tokenizer.vocab_size, "tokenizer.vocab_size (no trained tokenizer yet)"


def planned_memory(cfg: ProjectConfig, layout: ParallelDims) -> dict:
    """The planner's per-device memory for ``cfg`` trained in ``layout`` (its ``memory`` section).

    The planner sees the run as launched, unless the plan section says otherwise explicitly: this many
    devices, tensor/pipeline/expert parallel degrees from the layout, and what this trainer does with them:
    FSDP2 sharding = ZeRO stage 3 over the shard dimension (``dp_shard`` x ``cp``; HSDP replicates over
    ``dp_replicate``), DDP = stage 0, MoE MLPs whole on every tensor-parallel rank, expert-parallel slices
    outside FSDP2/DDP (expert stage 0). ``cfg.model.vocab_size`` must be set.
    """
    from pretrainlab.plan.planner import make_plan

    fields = type(cfg.plan).model_fields  # "given" = differs from its default (a resolved config sets every field)
    given = {n for n, f in fields.items() if getattr(cfg.plan, n) != f.default}
    shard = layout.dp_shard * layout.cp
    trainer = {"devices": layout.world, "tensor_parallel": layout.tp, "pipeline_parallel": layout.pp,
               "expert_parallel": layout.ep, "zero_stage": 3 if layout.fsdp and shard > 1 else 0,
               "data_parallel_shard": shard if layout.fsdp else None,
               "moe_tensor_parallel": cfg.model.moe is None, "expert_zero_stage": 0 if layout.ep > 1 else None}
    update = {name: value for name, value in trainer.items() if name not in given}
    return make_plan(cfg.model_copy(update={"plan": cfg.plan.model_copy(update=update)}))["memory"]


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
    layout = resolve_dims(cfg.model_copy(update={"model": model_cfg}), world, check_device=False)
    per_step = tc.micro_batch * layout.dp  # data-parallel ranks read different rows
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
    result["layout"] = layout.describe()
    try:
        mem = planned_memory(cfg.model_copy(update={"model": model_cfg}), layout)
        result["memory_per_device_bytes"] = mem.get("total_bytes")
        result["memory_fits"] = mem.get("fits")
        result["memory_detail"] = {k: mem.get(k) for k in ("model_states_bytes", "activations_bytes", "device_bytes",
                                                           "params_per_device", "weights_bytes", "optimizer_bytes")}
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
    table.add_row("layout", result["layout"])
    if "memory_detail" in result:
        d = result["memory_detail"]
        table.add_row("per rank: parameters / weights / optimizer", f"{d['params_per_device']:,.0f} / "
                      f"{d['weights_bytes'] / 2**20:.2f} MiB / {d['optimizer_bytes'] / 2**20:.2f} MiB")
    if "memory_per_device_bytes" in result:
        table.add_row("memory per device (planner)", f"{result['memory_per_device_bytes'] / 2**30:.1f} GiB "
                      f"({'fits' if result['memory_fits'] else 'does NOT fit'}; details: pretrainlab plan)")
    console.print(table)
    if accum is None:
        raise UserError(
            f"train.global_batch_tokens={tc.global_batch_tokens} is not divisible by micro_batch*seq_len*data-parallel "
            f"ranks ({tc.micro_batch}*{tc.seq_len}*{layout.dp}); adjust it or train.micro_batch"
        )
    return result
