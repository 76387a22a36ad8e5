"""The `optim`, `train`, `parallel`, `mix`, `packing`, `checkpoint`, `guard` and `moe_monitor` config sections, owned by this package.

``pretrainlab.config.ProjectConfig`` gathers every package's section; this module imports
nothing from pretrainlab but the ``Section`` base (and other packages' section modules), so
``pretrainlab.config`` can import it without a circle.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pretrainlab.configsection import Section


class OptimConfig(Section):
    """AdamW (or SGD with momentum) with linear warmup then cosine decay to min_lr_ratio * lr."""

    name: Literal["adamw", "sgd"] = Field(
        "adamw", description="Optimizer: adamw, or sgd with momentum (the accident suite's 'wrong optimizer')."
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (optim.name=sgd only).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final LR as a fraction of the peak.")
    warmup_steps: int = Field(50, ge=0, description="Linear warmup steps (from lr/warmup_steps to lr).")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="Decay after warmup.")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0, description="Decoupled decay; never applied to norms, biases, embeddings.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global grad norm to this (0 disables).")


class TrainConfig(Section):
    """The training loop: batch geometry, length, precision, logging cadence."""

    tokens: Path | None = Field(None, description="Token shard directory (default: tokenize.out).")
    steps: int = Field(300, ge=1, description="Optimizer steps.")
    seq_len: int = Field(256, ge=8, description="Tokens per training row.")
    micro_batch: int = Field(8, ge=1, description="Rows per forward/backward.")
    global_batch_tokens: int = Field(8192, ge=8, description="Tokens per optimizer step (all ranks, all micro-batches).")
    seed: int = Field(1234, description="Seeds init, data order and sampling.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="bf16/fp16 = autocast to that dtype with fp32 master weights."
    )
    loss_scaling: bool = Field(
        True, description="fp16 only: dynamic loss scaling (torch.amp.GradScaler); false lets small gradients underflow."
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: all cores).")
    parallel: Literal["ddp", "fsdp2"] = Field(
        "ddp", description="Data parallelism under torchrun: DDP replicas or FSDP2 (fully_shard) sharding."
    )
    expert_parallel: int = Field(
        1, ge=1, description="Expert-parallel group size under torchrun: each MoE layer's experts are split over this "
        "many consecutive ranks and tokens move by all-to-all; 1 = off. Must divide the process count and "
        "model.moe.num_experts.",
    )
    activation_checkpointing: bool = Field(False, description="Recompute each block's activations in backward.")
    compile: bool = Field(False, description="torch.compile each decoder block.")
    fp8: bool = Field(
        False, description="FP8 matmuls in the linear layers through torchao's float8 training (pip install "
        "'pretrainlab[fp8]'); needs a CUDA GPU of compute capability >= 8.9 (Ada, Hopper or newer).",
    )
    fp8_scaling: Literal["rowwise", "tensorwise"] = Field(
        "rowwise", description="fp8 only: torchao's scaling recipe (rowwise: a scale per row, more accurate; "
        "tensorwise: one scale per tensor, faster).",
    )
    fp8_skip: list[str] = Field(
        ["lm_head", "router"], description="fp8 only: linear layers kept in high precision, by name component "
        "(e.g. lm_head = the output projection, router = MoE routers, wo = attention output projections).",
    )
    log_every: int = Field(10, ge=1, description="Steps between metrics lines.")
    val_every: int = Field(100, ge=1, description="Steps between validation-loss evaluations.")
    val_batches: int = Field(8, ge=1, description="Micro-batches of held-out data per validation.")
    stop_signals: list[str] = Field(
        ["SIGINT", "SIGTERM", "SIGUSR1"],
        description="Signals that stop training at the next step boundary with a checkpoint (all ranks agree on the "
        "step); exit code 130 after SIGINT, 99 after the others (requeue). [] keeps Python's default behaviour.",
    )

    @field_validator("stop_signals")
    @classmethod
    def _catchable_signals(cls, names: list[str]) -> list[str]:
        import signal

        out = []
        for name in names:
            text = str(name).strip().upper()
            sig = getattr(signal, text if text.startswith("SIG") else f"SIG{text}", None)
            if not isinstance(sig, signal.Signals) or sig.name in ("SIGKILL", "SIGSTOP"):
                raise ValueError(f"{name!r} is not a signal that can be caught; use names like SIGTERM, SIGUSR1")
            out.append(sig.name)
        return out

    @model_validator(mode="after")
    def _batch_divides(self) -> "TrainConfig":
        row = self.micro_batch * self.seq_len
        if self.global_batch_tokens % row:
            raise ValueError(
                f"global_batch_tokens ({self.global_batch_tokens}) must be a multiple of "
                f"micro_batch*seq_len ({row})"
            )
        return self


class ParallelConfig(Section):
    """The device mesh under torchrun (as torchtitan's): data (HSDP), tensor, pipeline, context and expert parallel.

    dp_replicate x dp_shard x cp x tp x pp must equal the number of processes; ep splits the data-parallel
    ranks (dp_replicate x dp_shard) into expert groups. Left at the defaults, train.parallel (ddp | fsdp2)
    and train.expert_parallel decide as before.
    """

    dp_replicate: int = Field(1, ge=1, description="Data-parallel replicas (DDP, or HSDP's replicate dimension).")
    dp_shard: int = Field(-1, ge=-1, description="FSDP2 shards per replica; -1 = the processes left over by the "
                          "other dimensions (with no other dimension and train.parallel=ddp, they are DDP replicas).")
    tp: int = Field(1, ge=1, description="Tensor parallel (torch.distributed.tensor.parallel): attention heads, the "
                    "MLP hidden and the vocabulary are split over this many consecutive ranks.")
    pp: int = Field(1, ge=1, description="Pipeline ranks (torch.distributed.pipelining); pp x "
                    "pipeline_stages_per_rank stages must divide model.n_layers.")
    cp: int = Field(1, ge=1, description="Context parallel (sequence split over ranks); CUDA only.")
    ep: int = Field(1, ge=1, description="Expert parallel: each MoE layer's experts split over this many "
                    "data-parallel ranks (tokens move by all-to-all); 1 = train.expert_parallel decides.")
    pipeline_schedule: Literal["1F1B", "Interleaved1F1B", "GPipe", "InterleavedZeroBubble"] = Field(
        "1F1B", description="pp > 1: torch's pipeline schedule; the interleaved ones run "
        "pipeline_stages_per_rank stages on each rank.")
    pipeline_stages_per_rank: int = Field(1, ge=1, description="Virtual stages per rank (2+ for the interleaved "
                                          "schedules).")
    pipeline_microbatches: int | None = Field(None, ge=1, description="Micro-batches per pipeline step; default: "
                                              "the gradient-accumulation count (rows per data-parallel rank / "
                                              "train.micro_batch).")
    loss_parallel: bool = Field(True, description="tp > 1: keep the output projection's logits split over the "
                                "vocabulary and compute the cross-entropy there (no all-gather of the logits).")


class MixStageConfig(Section):
    """One stage of a staged mixture (e.g. Cold start, Mid, Hot finish)."""

    name: str = Field(..., description="Stage name, logged at transitions.")
    until_tokens: int | None = Field(None, ge=1, description="Stage ends when this many tokens were drawn (None: to the end).")
    sources: list[str] | None = Field(None, description="Sources sampled in this stage (default: all).")
    temperature: float = Field(1.0, gt=0, description="P(i) ∝ n_i^(1/T) over this stage's sources.")
    weights: dict[str, float] | None = Field(None, description="Explicit weights instead of temperature.")


class MixConfig(Section):
    """Data mixture over sources: temperature or explicit weights, optionally staged by tokens."""

    temperature: float = Field(1.0, gt=0, description="P(i) ∝ n_i^(1/T); 1 = proportional to tokens, large = uniform.")
    weights: dict[str, float] | None = Field(None, description="Explicit sampling weight per source (overrides temperature).")
    stages: list[MixStageConfig] = Field(
        default_factory=list, description="Staged schedule by token boundaries; empty = one stage from the fields above."
    )
    max_epochs: float | None = Field(
        None, gt=0, description="Cap on passes over any one source; a capped source leaves the mixture (warned up front)."
    )

    @model_validator(mode="after")
    def _stages_ordered(self) -> "MixConfig":
        bounds = [st.until_tokens for st in self.stages]
        if any(b is None for b in bounds[:-1]):
            raise ValueError("only the last mix stage may omit until_tokens")
        given = [b for b in bounds if b is not None]
        if any(a >= b for a, b in zip(given, given[1:])):
            raise ValueError(f"mix stage until_tokens must increase, got {given}")
        return self


class PackingConfig(Section):
    """How documents become fixed-length training rows."""

    mode: Literal["concat", "best_fit"] = Field(
        "concat", description="concat: cut rows from the eos-separated stream; best_fit: whole documents, minimal padding."
    )
    doc_mask: bool = Field(
        True, description="Block-diagonal causal attention (no attention across documents) and positions restarting per document."
    )
    best_fit_buffer: int = Field(64, ge=1, description="Pending document pieces per source the best-fit packer chooses from.")


class CheckpointConfig(Section):
    every: int = Field(100, ge=1, description="Save a checkpoint every N steps (and at the end).")
    keep_last: int = Field(3, ge=1, description="Keep the newest K complete checkpoints.")
    async_save: bool = Field(
        False, description="Write checkpoints on a background thread; training blocks only to copy state to CPU."
    )
    format: Literal["auto", "full", "sharded"] = Field(
        "auto",
        description="full: rank 0 writes gathered model.pt/optim.pt; sharded: every rank writes its own "
        "torch.distributed.checkpoint shard (no gather; any world size can resume); auto: sharded under torchrun, "
        "full for one process.",
    )
    milestone_every_tokens: int | None = Field(
        None, ge=1, description="Also keep an immutable checkpoint every N tokens (checkpoints/milestones/tokens_1.5B)."
    )
    keep_best: bool = Field(
        True, description="Keep checkpoints/best: the lowest-validation-loss checkpoint among steps that both validate and save."
    )


_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(h|m|steps?)?\s*$")


def parse_window(text: str) -> tuple[str, float]:
    """'24h' -> ('hours', 24), '90m' -> ('hours', 1.5), '500' or '500steps' -> ('steps', 500)."""
    m = _WINDOW.match(str(text))
    if not m:
        raise ValueError(f"window {text!r} must look like '24h', '90m' or '500steps'")
    value, unit = float(m.group(1)), m.group(2) or "steps"
    if value <= 0:
        raise ValueError(f"window {text!r} must be positive")
    if unit == "h":
        return "hours", value
    if unit == "m":
        return "hours", value / 60.0
    return "steps", float(int(value))


GuardAction = Literal["pause", "alert", "off"]


class GuardConfig(Section):
    """Safety rails during training (train/guard.py): skip bad steps, roll back, pause on bad trends.

    A bad step (non-finite loss or gradient, or a loss spike) is skipped; after
    `rollback_after` consecutive bad steps, or `rollback_max_in_window` within
    `rollback_window` steps, the run reloads the newest complete checkpoint and
    skips the data past the bad step plus `skip_batches` batches, a margin that doubles
    on each further rollback (the PaLM remedy). Every action is an
    event in events.jsonl; alerts go where `alerts` says.
    """

    enabled: bool = Field(True, description="Run the guards (non-finite/spike skip, rollback, trend rules).")
    skip_nonfinite: bool = Field(True, description="Skip the optimizer step when the loss or gradient norm is NaN/inf.")
    spike_z: float = Field(6.0, gt=0, description="A loss above mean + z*std of the rolling window is a spike (skipped).")
    spike_window: int = Field(128, ge=4, description="Steps in the rolling window of accepted losses for spike detection.")
    spike_warmup: int = Field(100, ge=0, description="Spike detection starts after this many steps (and a full-enough window).")
    rollback_after: int = Field(3, ge=1, description="Consecutive bad steps that trigger a rollback.")
    rollback_max_in_window: int = Field(5, ge=1, description="Bad steps within rollback_window that trigger a rollback.")
    rollback_window: int = Field(100, ge=1, description="Steps over which rollback_max_in_window counts bad steps.")
    skip_batches: int = Field(
        200, ge=0, description="After a rollback, global batches (optimizer steps of data) skipped beyond everything "
        "consumed up to the bad step; doubled on each further rollback of the run."
    )
    max_rollbacks: int = Field(3, ge=0, description="Rollbacks allowed in one run; one more stops training with an error.")
    rising_window: str = Field("24h", description="Loss rising over this window ('24h', '90m' or '500steps') is a bad trend.")
    rising_action: GuardAction = Field("pause", description="What a rising loss does: pause (checkpoint, alert, exit 75), alert, off.")
    rising_alpha: float = Field(0.01, gt=0, lt=1, description="One-sided significance level of the rising-slope t-test.")
    flat_window: str = Field("72h", description="Loss flat over this window ('72h', '500steps', ...) is a bad trend.")
    flat_action: GuardAction = Field("pause", description="What a flat loss does: pause, alert, off.")
    flat_tolerance: float = Field(
        0.001, ge=0, description="Flat = the fitted loss fell by less than this fraction of its mean over flat_window."
    )
    throughput_window: str = Field(
        "1h", description="Window whose median tokens/s is the throughput reference (the history there is, while shorter)."
    )
    throughput_fraction: float = Field(0.5, gt=0, lt=1, description="tokens/s below this fraction of the window median is a drop.")
    throughput_action: GuardAction = Field("alert", description="What a throughput drop does: alert, pause, off.")
    straggler_factor: float = Field(
        1.5, gt=1, description="Straggler: a rank whose step time before synchronising exceeds the median of the "
        "other ranks by this factor (needs hardware.enabled; under torchrun)."
    )
    straggler_steps: int = Field(3, ge=1, description="Consecutive log steps a rank must be slow before the straggler alert.")
    straggler_action: Literal["alert", "off"] = Field("alert", description="What a straggler does: alert (naming rank and host), off.")
    inject_nan_at_steps: list[int] = Field(
        [], description="Accident experiments: poison the data batches the run would train on at these steps (loss NaN)."
    )

    @field_validator("rising_action", "flat_action", "throughput_action", mode="before")
    @classmethod
    def _off_is_not_false(cls, v):
        return "off" if v is False else v  # YAML 1.1 reads an unquoted `off` as the boolean false

    @field_validator("rising_window", "flat_window", "throughput_window", mode="before")
    @classmethod
    def _window_text(cls, v):
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _windows_parse(self) -> "GuardConfig":
        for name in ("rising_window", "flat_window", "throughput_window"):
            parse_window(getattr(self, name))
        return self


class MoEMonitorConfig(Section):
    """MoE monitoring during training (train/moe_monitor.py; active when model.moe is set).

    Per MoE layer and step it logs tokens per expert, load CV, max/min load,
    drop rate, aux and z losses, gate-logit mean/variance and per-expert router
    gradient norms, and flags routing collapse as an event and an alert.
    """

    top_fraction: float = Field(0.1, gt=0, le=1, description="The 'top experts' of the collapse rule: this share of experts (at least one).")
    max_top_share: float = Field(
        0.5, gt=0, le=1, description="Collapse when the top experts receive more than this share of the routed tokens."
    )
    max_drop_rate: float = Field(0.001, ge=0, le=1, description="Collapse when more than this share of assignments is dropped.")
    patience: int = Field(3, ge=1, description="Consecutive steps a condition must hold before it fires (once, until it clears).")
    after_step: int = Field(0, ge=0, description="The collapse rule is silent up to this step.")
    histograms: bool = Field(True, description="Write per-layer expert-load histograms to TensorBoard (when log.tensorboard).")
