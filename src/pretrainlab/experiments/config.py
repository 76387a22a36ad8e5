"""The `experiments` config section: thresholds of the accident diagnoses, sweep and LR-range settings.

Kept free of imports from ``pretrainlab.config`` (which imports this module),
like the plan section. The size of the runs is not here: it is the base
config's ``model``/``train`` sections (see configs/experiments/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ACCIDENTS = ("lr_x10", "no_warmup", "batch_1", "no_clip", "sgd", "fp16_no_scaling", "bf16")

# The fields each command reads; its --help lists only these (any of them can still be --set).
ACCIDENTS_FIELDS = (
    "out", "accidents", "lr_multiplier", "no_clip_lr_multiplier", "early_steps", "early_margin", "bad_batch_steps",
    "bad_batch_weight", "excursion_ratio", "diverge_window", "oscillation_ratio", "diverge_margin", "slow_ratio",
    "target_fraction", "smooth_steps", "grad_explosion_ratio", "zero_grad_ratio", "parallel",
)
SWEEP_FIELDS = ("out", "parallel", "metric", "target_loss", "seed_repeats", "smooth_steps")
LR_RANGE_FIELDS = ("out", "lr_min", "lr_max", "lr_steps", "lr_stop_factor")


class ExperimentsConfig(BaseModel):
    """`experiments accidents`, `experiments sweep`, `experiments lr-range`: what to run and how results are judged."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    out: Path | None = Field(None, description="Report folder (default: <workdir>/experiments/<accidents|sweep|lr_range>).")
    accidents: list[str] = Field(
        list(ACCIDENTS), description=f"Accidents run after the baseline (list or comma-separated), from "
        f"{list(ACCIDENTS)}; bf16 is fp16_no_scaling's control and is added with it."
    )
    lr_multiplier: float = Field(10.0, gt=1, description="lr_x10: the baseline's optim.lr times this.")
    no_clip_lr_multiplier: float = Field(
        1.0, ge=1, description="no_clip runs at optim.lr times this; above 1 it is judged against a clipped run at "
        "the same LR (lr_x10 when the multipliers match, else an extra 'clip_control' run): clipping only matters "
        "once gradients spike."
    )
    early_steps: int = Field(
        20, ge=4, description="Window (first steps) in which loss oscillation and the early-phase excess are measured."
    )
    early_margin: float = Field(
        0.25, gt=0, description="Worse early phase: within the first early_steps the run's loss stands this many nats "
        "above the baseline's at the same step (diverge_window-step means; same batches)."
    )
    bad_batch_steps: list[int] = Field(
        default_factory=list, description="Steps (1-based) at which every run gets a simulated corrupted batch: the "
        "gradient of the step's inputs against random next tokens, weighted bad_batch_weight, is added (a gradient "
        "spike of a few hundred times the median norm); clipping absorbs it, no_clip shows what happens without "
        "(list or comma-separated)."
    )
    bad_batch_weight: float = Field(30.0, gt=0, description="Weight of a simulated bad batch's loss (the spike's size).")
    excursion_ratio: float = Field(
        3.0, gt=1, description="Gradient-norm excursion: a step whose norm exceeds this multiple of the run's own median."
    )
    diverge_window: int = Field(
        3, ge=1, description="Steps averaged before the divergence rule compares a run with its best and the baseline."
    )
    oscillation_ratio: float = Field(
        1.5, gt=1, description="Early oscillation (std of step-to-step loss changes) above this multiple of the baseline's is flagged."
    )
    diverge_margin: float = Field(
        0.5, gt=0, description="Diverged: the loss non-finite or this many nats above the untrained model's (step 1); "
        "loss spike: this many nats above both the run's best so far and the baseline at that step."
    )
    slow_ratio: float = Field(
        1.5, gt=1, description="Slow: needs more than this multiple of the baseline's steps to reach the baseline's loss (target_fraction)."
    )
    target_fraction: float = Field(
        0.5, gt=0, le=1, description="Slow convergence target: the baseline's mean loss at this fraction of its steps."
    )
    smooth_steps: int = Field(10, ge=1, description="Trailing mean window (steps) used for 'loss reached' and final losses.")
    grad_explosion_ratio: float = Field(
        4.0, gt=1, description="Gradient-norm explosion: a step's norm above this multiple of the baseline's largest "
        "(bad-batch steps left out of both)."
    )
    zero_grad_ratio: float = Field(
        1.5, gt=1, description="fp16 underflow: share of exactly-zero gradient entries above this multiple of the control's."
    )

    @field_validator("bad_batch_steps", mode="before")
    @classmethod
    def _steps_list(cls, v):
        if isinstance(v, str):
            v = [x.strip() for x in v.strip("[]").split(",") if x.strip()]
        if any(str(x).lstrip("-").isdigit() and int(x) < 1 for x in v or []):
            raise ValueError(f"bad_batch_steps are 1-based step numbers, got {v}")
        return v

    @field_validator("accidents", mode="before")
    @classmethod
    def _accident_names(cls, v):
        if isinstance(v, str):
            v = [x.strip() for x in v.split(",") if x.strip()]
        for name in v or []:
            if name not in ACCIDENTS:
                raise ValueError(f"unknown accident {name!r}; choose from {list(ACCIDENTS)}")
        return v

    # sweep
    parallel: int = Field(1, ge=1, description="Sweep runs trained at once (each gets train.threads = cores / parallel).")
    metric: Literal["final_val_ppl", "final_val_loss", "steps_to_target", "tokens_per_s"] = Field(
        "final_val_ppl", description="Sweep ranking metric (tokens_per_s: higher is better; the others: lower)."
    )
    target_loss: float | None = Field(
        None, gt=0, description="Sweep: train loss whose first (smoothed) arrival is reported (default: the worst run's final loss)."
    )
    seed_repeats: int = Field(
        1, ge=0, description="Sweep: reruns of the best configuration with other seeds, to measure seed-to-seed noise."
    )
    # LR range test
    lr_min: float = Field(1e-6, gt=0, description="LR range test: first learning rate.")
    lr_max: float = Field(1.0, gt=0, description="LR range test: last learning rate (the ramp is exponential).")
    lr_steps: int = Field(300, ge=10, description="LR range test: steps of the ramp.")
    lr_stop_factor: float = Field(4.0, gt=1, description="LR range test: stop once the smoothed loss exceeds this multiple of its best.")
