"""The `plan` config section: everything the planner needs besides the model.

Kept free of imports from ``pretrainlab.config`` (which imports this module) so
the section can live beside the planner. Fields are flat so every one becomes a
`pretrainlab plan --flag`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MODEL_PRESETS = ("1b", "7b", "14b", "30b", "moe-10b")
HARDWARE_PRESETS = ("a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "custom")


class PlanConfig(BaseModel):
    """`plan`: compute/time/cost/memory/I-O budget (docs/PLANNER.md explains every formula)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # ---- model and tokens
    model_preset: Literal["1b", "7b", "14b", "30b", "moe-10b"] | None = Field(
        None, description="Plan a preset model instead of the `model` section: 1b, 7b, 14b, 30b (dense) or moe-10b."
    )
    total_params: float | None = Field(
        None, gt=0, description="Override the total parameter count (e.g. 10e9); 6N then counts the active "
        "parameters given (default this total). The attention term still comes from the architecture (preset or "
        "`model` section); with no architecture (no preset and no model.vocab_size) the plan is by parameter count "
        "alone: FLOPs 6N only, memory without activations, batch and tokens defaulting as for a preset.",
    )
    active_params: float | None = Field(
        None, gt=0, description="Override the parameters active per token (MoE; default total_params)."
    )
    tokens: float | None = Field(
        None, gt=0,
        description="Training tokens. Default: train.steps*train.global_batch_tokens for the `model` section, "
        "20 tokens/parameter (Chinchilla) for a preset.",
    )
    seq_len: int | None = Field(None, ge=1, description="Sequence length (default train.seq_len; 4096 for presets).")
    micro_batch: int | None = Field(None, ge=1, description="Rows per device per forward/backward (default train.micro_batch; 1 for presets).")
    global_batch_tokens: float | None = Field(
        None, gt=0, description="Tokens per optimizer step (default train.global_batch_tokens; 4M for presets)."
    )
    flops_formula: Literal["6n+attention", "6n"] = Field(
        "6n+attention", description="FLOPs/token used for time: 6N, or 6N + 12*layers*d_model*seq_len (attention)."
    )

    # ---- hardware
    hardware: Literal["a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "custom"] | None = Field(
        None, description="Device preset (default h100-sxm, or the from_run run's device); 'custom' needs "
        "peak_tflops and device_memory_gb."
    )
    precision: Literal["bf16", "fp8", "tf32", "fp32"] = Field(
        "bf16", description="Which dense datasheet peak the MFU refers to (fp8 needs H100/H200)."
    )
    peak_tflops: float | None = Field(None, gt=0, description="Per-device peak TFLOP/s (overrides the preset's datasheet peak).")
    device_memory_gb: float | None = Field(None, gt=0, description="Per-device memory in GB (1e9 bytes), overrides the preset.")
    device_power_w: float | None = Field(None, gt=0, description="Average power per device in watts (default: the preset's TDP).")
    devices: int | None = Field(None, ge=1, description="Number of devices (default 1, or the from_run run's world size).")
    mfu: float | None = Field(
        None, gt=0, le=1, description="Model FLOPs utilization assumed end to end (default 0.4; from_run measures it)."
    )
    tokens_per_sec_per_device: float | None = Field(
        None, gt=0, description="Measured training throughput per device (tokens/s, at the planned scale); time, "
        "cost and energy then follow from it instead of peak x MFU, and the MFU shown is the one it implies.",
    )
    from_run: Path | None = Field(
        None, description="Run directory whose measured MFU (and hardware, model, devices unless set) calibrate the plan."
    )
    price_per_device_hour: float | None = Field(None, ge=0, description="Price of one device-hour (e.g. USD); no cost without it.")
    buffer_low: float = Field(1.2, ge=1, description="Wall-time buffer over pure compute (I/O, checkpoints, failures), low end.")
    buffer_high: float = Field(1.3, ge=1, description="Wall-time buffer, high end.")

    # ---- parallelism and memory
    tensor_parallel: int = Field(1, ge=1, description="Tensor-parallel degree t.")
    pipeline_parallel: int = Field(1, ge=1, description="Pipeline-parallel degree p (1F1B schedule).")
    expert_parallel: int = Field(1, ge=1, description="Expert-parallel degree e (within the data-parallel group).")
    moe_tensor_parallel: bool = Field(
        True, description="Tensor parallelism also splits the MoE MLPs (router, shared and routed experts), as "
        "Megatron does; false: every tensor-parallel rank holds them whole, routed experts split by expert_parallel "
        "only (what `pretrainlab train` does).",
    )
    data_parallel_shard: int | None = Field(
        None, ge=1, description="ZeRO/FSDP shard group: model states are sharded over this many data-parallel ranks "
        "and replicated over the rest (HSDP's dp_shard; must divide the data-parallel degree). Default: all of them.",
    )
    expert_zero_stage: Literal[0, 1, 2, 3] | None = Field(
        None, description="ZeRO stage of the routed experts over their expert-data-parallel ranks (default "
        "zero_stage); `pretrainlab train` keeps expert-parallel slices out of FSDP2/DDP, i.e. 0.",
    )
    zero_stage: Literal[0, 1, 2, 3] = Field(
        1, description="ZeRO stage over data parallelism: 0 DDP, 1 optimizer states (Megatron distributed optimizer), "
        "2 +gradients (FSDP SHARD_GRAD_OP), 3 +parameters (FSDP FULL_SHARD / FSDP2 fully_shard).",
    )
    sequence_parallel: bool = Field(True, description="Megatron sequence parallelism with tensor parallelism.")
    optimizer_scheme: Literal["mixed", "fp32-master", "mixed-fp32-grads"] = Field(
        "fp32-master",
        description="Bytes/param weights+grads+AdamW: fp32-master 4+4+8 (fp32 params with bf16 autocast, this "
        "trainer); mixed 2+2+12 (ZeRO paper, Megatron bf16 params); mixed-fp32-grads 2+4+12 (Megatron fp32 main grads).",
    )
    recompute: Literal["none", "selective", "full"] | None = Field(
        None, description="Activation recomputation (Korthikanti et al. 2022): none, selective (attention core) or "
        "full. Default: full when train.activation_checkpointing is on for the `model` section, else none.",
    )
    flash_attention: bool = Field(True, description="Attention kernel keeps no s*s scores (flash/SDPA/FlexAttention).")
    activation_formula: Literal["pretrainlab", "fused", "gpt"] = Field(
        "pretrainlab",
        description="Per-layer activations: pretrainlab (this repo's block under bf16 autocast, measured: "
        "sbh(22 + 4kv/h + 8f/h)), fused (Llama block with fused norm/SwiGLU kernels: sbh(12 + 4kv/h + 6f/h)) or gpt "
        "(Korthikanti et al. 2022: sbh(34 + 5as/h)).",
    )
    memory_reserve: float = Field(
        0.1, ge=0, lt=1, description="Fraction of device memory treated as unusable (CUDA context, allocator, NCCL)."
    )

    # ---- checkpoints and data I/O
    checkpoint_every_steps: int | None = Field(None, ge=1, description="Steps between checkpoints (default checkpoint.every).")
    storage_write_gbps: float = Field(5.0, gt=0, description="Aggregate checkpoint write bandwidth, GB/s.")
    bytes_per_token: int | None = Field(None, ge=1, description="Stored bytes per token (default 2 if vocab <= 65536 else 4).")
    video_cameras: int = Field(0, ge=0, description="Cameras per multimodal sample (0: text only).")
    video_width: int = Field(640, ge=1, description="Frame width in pixels.")
    video_height: int = Field(480, ge=1, description="Frame height in pixels.")
    video_channels: int = Field(3, ge=1, description="Channels per pixel.")
    video_bytes_per_channel: int = Field(1, ge=1, description="Bytes per channel value (1 for 8-bit video).")
    video_fps: float = Field(12.0, gt=0, description="Frames per second per camera.")
    video_compression: float = Field(1.0, ge=1, description="Compression ratio of stored video (1: raw frames).")
    video_tokens_per_frame: int = Field(256, ge=1, description="Tokens one frame becomes after discretization.")

    # ---- data preparation (`data build` on data.executor), extrapolated from measured per-core rates
    data_prep_tb: float = Field(40.0, ge=0, description="Raw text to prepare with `data build`, TB (0: no data-prep row).")
    data_mb_per_core_s: float = Field(
        4.0, gt=0, description="`data build` throughput per core, MB/s of input. Default: every default stage "
        "(quality, PII, langid, exact + near dedup) on real text, ~4 MB per CPU-second on the 2-core VM (the dedup "
        "stages alone: 8.9 MB/CPU-s at 1 GB; docs/BENCHMARKS.md issue 17); measure your own and set it."
    )
    data_parallel_efficiency: float = Field(
        0.94, gt=0, le=1, description="Throughput per core at scale / on one core (1 -> 2 workers measured 1.88x "
        "on 1 GB, an idle 2-core VM)."
    )
    data_nodes: list[int] = Field([1, 8, 64], min_length=1, description="Node counts of the data-prep table.")
    data_cores_per_node: int = Field(64, ge=1, description="Cores per node that run data tasks.")

    # ---- energy
    pue: float = Field(1.2, ge=1, description="Data-centre power usage effectiveness.")
    grid_kg_co2_per_kwh: float = Field(0.4, ge=0, description="Grid carbon intensity, kg CO2e per kWh.")

    @model_validator(mode="after")
    def _consistent(self) -> "PlanConfig":
        if self.buffer_high < self.buffer_low:
            raise ValueError(f"buffer_high ({self.buffer_high}) must be >= buffer_low ({self.buffer_low})")
        if self.active_params is not None and self.total_params is not None and self.active_params > self.total_params:
            raise ValueError("active_params must not exceed total_params")
        given = [k for k in ("mfu", "from_run", "tokens_per_sec_per_device") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one source of throughput (mfu, from_run or tokens_per_sec_per_device), "
                             f"not both {' and '.join(given)}")
        return self
