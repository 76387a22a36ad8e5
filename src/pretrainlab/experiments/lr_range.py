"""`pretrainlab experiments lr-range -c CONFIG`: the learning-rate range test (Smith 2017; fastai's lr_find).

One run of the base config whose LR grows exponentially from
``experiments.lr_min`` to ``experiments.lr_max`` over ``experiments.lr_steps``
steps (no warmup, no decay, guards off). The loss is smoothed with a
bias-corrected exponential moving average (beta 0.98); the test stops early
once the smoothed loss exceeds ``lr_stop_factor`` times its best. The
suggested peak LR is the one where the smoothed loss falls fastest per decade
of LR (the steepest negative slope of loss vs log10 LR), before the loss
minimum; the LR at the minimum / 10 is given for comparison.
"""

from __future__ import annotations

import math

from pretrainlab.config import ProjectConfig
from pretrainlab.errors import TrainingStopped, UserError
from pretrainlab.experiments.render import Record, fmt
from pretrainlab.experiments.runner import Variant, require_shards, run_variant
from pretrainlab.fsio import atomic_write_json
from pretrainlab.progress import console
from pretrainlab.train.callbacks import Callback

EMA_BETA = 0.98


def ramp_lr(i: int, n: int, lr_min: float, lr_max: float) -> float:
    """LR of 0-based step ``i`` of ``n``: lr_min * (lr_max/lr_min)^(i/(n-1))."""
    return lr_min * (lr_max / lr_min) ** (i / max(1, n - 1))


def smooth(losses: list[float], beta: float = EMA_BETA) -> list[float]:
    """Bias-corrected EMA (NaN from the first non-finite loss on)."""
    out, avg = [], 0.0
    for i, x in enumerate(losses):
        if not math.isfinite(x) or (out and not math.isfinite(out[-1])):
            out.append(math.nan)
            continue
        avg = beta * avg + (1 - beta) * x
        out.append(avg / (1 - beta ** (i + 1)))
    return out


class LRRamp(Callback):
    """Overrides the schedule's LR before each update; stops the run once the loss has blown up."""

    needs_host_metrics = True  # reads every step's loss

    def __init__(self, lr_min: float, lr_max: float, steps: int, stop_factor: float):
        self.lr_min, self.lr_max, self.steps, self.stop_factor = lr_min, lr_max, steps, stop_factor
        self.losses: list[float] = []

    def on_after_backward(self, ctx, metrics: dict) -> None:
        lr = ramp_lr(metrics["step"] - 1, self.steps, self.lr_min, self.lr_max)
        for group in ctx.optimizer.param_groups:
            group["lr"] = lr
        metrics["lr"] = lr

    def on_step_end(self, ctx, metrics: dict) -> None:
        self.losses.append(metrics["loss"])
        sm = smooth(self.losses)
        best = min((s for s in sm if math.isfinite(s)), default=math.inf)
        if len(sm) > 10 and (not math.isfinite(sm[-1]) or sm[-1] > self.stop_factor * best):
            raise TrainingStopped(f"LR range test ended at LR {metrics['lr']:.3g}: the smoothed loss blew up")


def suggest(lrs: list[float], losses: list[float]) -> dict:
    """Steepest descent of the smoothed loss vs log10(LR), searched before the smoothed loss's minimum."""
    sm = smooth(losses)
    pts = [(math.log10(lr), s) for lr, s in zip(lrs, sm) if lr > 0 and math.isfinite(s)]
    if len(pts) < 5:
        raise UserError("the LR range test has too few finite points to suggest an LR; "
                        "lower experiments.lr_max or raise experiments.lr_steps")
    i_min = min(range(len(pts)), key=lambda i: pts[i][1])
    skip = max(1, len(pts) // 10)  # the EMA's first points are still settling
    span = max(2, len(pts) // 20)  # slope over +-span points, so one noisy batch does not decide
    best_i, best_slope = None, 0.0
    for i in range(skip, i_min + 1):
        a, b = max(0, i - span), min(len(pts) - 1, i + span)
        if pts[b][0] == pts[a][0]:
            continue
        slope = (pts[b][1] - pts[a][1]) / (pts[b][0] - pts[a][0])
        if slope < best_slope:
            best_i, best_slope = i, slope
    lr_min_loss = 10 ** pts[i_min][0]
    return {
        "suggested_lr": 10 ** pts[best_i][0] if best_i is not None else lr_min_loss / 10,
        "rule": "steepest descent of the EMA-smoothed loss per decade of LR, before the loss minimum"
        if best_i is not None else "no descending region found: LR at the minimum loss / 10",
        "slope_per_decade": best_slope if best_i is not None else None,
        "lr_at_min_loss": lr_min_loss,
        "min_loss": pts[i_min][1],
        "min_over_10": lr_min_loss / 10,
    }


def run_lr_range(base: ProjectConfig) -> dict:
    ex = base.experiments
    if ex.lr_max <= ex.lr_min:
        raise UserError(f"experiments.lr_max ({ex.lr_max:g}) must be above experiments.lr_min ({ex.lr_min:g})")
    require_shards(base)
    out = (ex.out or base.workdir / "experiments" / "lr_range").resolve()
    overrides = ["optim.warmup_steps=0", "optim.schedule=constant", f"optim.lr={ex.lr_min:g}",
                 f"train.steps={ex.lr_steps}", f"train.val_every={ex.lr_steps}", "guard.enabled=false",
                 "experiments.bad_batch_steps=[]"]  # the ramp reads the clean loss curve
    console.print(f"LR range test: {ex.lr_min:g} -> {ex.lr_max:g} over {ex.lr_steps} steps -> {out}")
    ramp = LRRamp(ex.lr_min, ex.lr_max, ex.lr_steps, ex.lr_stop_factor)
    result = run_variant(base, Variant("lr_range", overrides), out, callbacks=[ramp])
    lrs = [s["lr"] for s in result["steps"]]
    losses = [s["loss"] for s in result["steps"]]
    sug = suggest(lrs, losses)
    rec = Record("LR range test")
    rec.h("Setup")
    rec.bullets([
        f"model: d_model {base.model.d_model}, {base.model.n_layers} layers; batch {base.train.global_batch_tokens} "
        f"tokens; optimizer {base.optim.name}",
        f"LR from {ex.lr_min:g} to {ex.lr_max:g}, exponential over {ex.lr_steps} steps; no warmup, no decay; "
        f"stops when the smoothed loss exceeds {ex.lr_stop_factor:g}x its best",
        f"ran {len(lrs)} steps" + (f" ({result['error']})" if result.get("error") else ""),
    ])
    sm = smooth(losses)
    rec.chart("lr_range", {"loss": [(math.log10(lr), x) for lr, x in zip(lrs, losses)],
                           "smoothed": [(math.log10(lr), s) for lr, s in zip(lrs, sm)]},
              "loss vs learning rate", "log10(learning rate)", "loss")
    rec.h("Suggestion")
    rec.p(f"Suggested peak LR: **{sug['suggested_lr']:.3g}** (rule: {sug['rule']}).")
    rec.bullets([
        f"steepest slope: {fmt(sug['slope_per_decade'])} loss per decade of LR",
        f"smoothed loss minimum {fmt(sug['min_loss'])} at LR {sug['lr_at_min_loss']:.3g}; "
        f"the 'minimum / 10' rule gives {sug['min_over_10']:.3g}",
        "use it as the peak of a warmup + decay schedule; confirm with "
        f"`pretrainlab experiments sweep ... --grid optim.lr={sug['suggested_lr'] / 3:.2g},{sug['suggested_lr']:.2g},"
        f"{min(sug['suggested_lr'] * 3, sug['lr_at_min_loss']):.2g}`",
    ])
    html_path, md_path = rec.write(out)
    atomic_write_json(out / "lr_range.json", {**sug, "lrs": lrs, "losses": losses})
    console.print(f"suggested peak LR {sug['suggested_lr']:.3g} ({sug['rule']}); report: {html_path}")
    return {"out": str(out), "report": str(html_path), "markdown": str(md_path), **sug}
