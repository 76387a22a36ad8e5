"""Measurements of a run's per-step record, and the symptoms they reveal against a baseline.

Pure functions over the step records of ``runner.StepRecorder`` (dicts with
``step``, ``loss``, ``grad_norm``, optional ``overflow`` and ``grad_zero_frac``).
Every symptom is a threshold from ``ExperimentsConfig`` applied to a measured
number, and the number is kept as the evidence.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from pretrainlab.experiments.config import ExperimentsConfig

SYMPTOMS = {
    "diverged": "loss diverged",
    "oscillation": "early oscillation",
    "slow": "slow convergence",
    "grad_explosion": "gradient-norm explosion",
    "overflow": "fp16 overflow",
    "underflow": "fp16 gradient underflow",
}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def series(steps: list[dict], key: str) -> list[float]:
    return [float(s[key]) if _finite(s.get(key)) else math.nan for s in steps]


def trailing_mean(xs: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each point (NaN once a non-finite value is inside the window)."""
    out = []
    for i in range(len(xs)):
        chunk = xs[max(0, i - window + 1): i + 1]
        out.append(statistics.fmean(chunk) if all(math.isfinite(c) for c in chunk) else math.nan)
    return out


def divergence_step(losses: list[float], margin: float, window: int,
                    baseline: list[float] | None = None) -> tuple[int | None, str]:
    """First 1-based step where the loss is non-finite, or its trailing mean rose ``margin`` nats above its
    own best so far while also standing ``margin`` above the baseline's trailing mean at that step.

    The second condition keeps a shared bump (a hard stretch of the same data order) from counting as a
    divergence: all runs see the same batches at the same step.
    """
    sm = trailing_mean(losses, window)
    bsm = trailing_mean(baseline, window) if baseline else None
    best = math.inf
    for i, (x, s) in enumerate(zip(losses, sm)):
        if not math.isfinite(x):
            return i + 1, "non-finite loss"
        if i + 1 < window or not math.isfinite(s):
            continue
        ref = bsm[i] if bsm is not None and i < len(bsm) and math.isfinite(bsm[i]) else None
        if s > best + margin and (ref is None or s > ref + margin):
            vs = f", baseline {ref:.3f}" if ref is not None else ""
            return i + 1, f"{window}-step mean loss {s:.3f} rose above its best {best:.3f} + {margin}{vs}"
        best = min(best, s)
    return None, ""


def oscillation(losses: list[float], early_steps: int) -> float:
    """Std of step-to-step loss changes over the first ``early_steps`` steps (NaN if they are not all finite)."""
    head = losses[:early_steps]
    if len(head) < 3 or not all(math.isfinite(x) for x in head):
        return math.nan
    return statistics.pstdev([b - a for a, b in zip(head, head[1:])])


def steps_to_reach(losses: list[float], target: float, window: int) -> int | None:
    """First 1-based step whose trailing-mean loss is at or below ``target``; None if never."""
    for i, s in enumerate(trailing_mean(losses, window)):
        if math.isfinite(s) and s <= target:
            return i + 1
    return None


def final_loss(losses: list[float], window: int) -> float:
    tail = losses[-window:]
    return statistics.fmean(tail) if tail and all(math.isfinite(x) for x in tail) else math.nan


def fmt_target(m: "Measures") -> str:
    t = m.extra.get("target_loss")
    return f"{t:.3f}" if _finite(t) else "?"


@dataclass
class Measures:
    """The numbers a diagnosis is made of (JSON-ready via ``__dict__``)."""

    steps: int
    first_loss: float
    final_loss: float
    diverged_at: int | None
    diverged_how: str
    oscillation: float
    steps_to_baseline: int | None
    tokens_to_baseline: int | None
    grad_norm_median: float
    grad_norm_max: float
    grad_norm_p99_over_median: float
    nonfinite_grad_steps: int
    overflow_steps: int
    grad_zero_frac: float | None
    extra: dict = field(default_factory=dict)


def measure(steps: list[dict], cfg: ExperimentsConfig, target_loss: float | None, tokens_per_step: int,
            baseline_losses: list[float] | None = None, same_data: bool = True) -> Measures:
    """``same_data``: the run draws the baseline's batches step for step (same batch geometry); if not, the
    divergence rule averages over ``smooth_steps`` instead of ``diverge_window``, since the noise differs."""
    losses = series(steps, "loss")
    gnorms = series(steps, "grad_norm")
    finite_g = sorted(g for g in gnorms if math.isfinite(g))
    window = cfg.diverge_window if same_data else max(cfg.diverge_window, cfg.smooth_steps)
    div_step, how = divergence_step(losses, cfg.diverge_margin, window, baseline_losses)
    reach = steps_to_reach(losses, target_loss, cfg.smooth_steps) if target_loss is not None else None
    zero = [s["grad_zero_frac"] for s in steps if _finite(s.get("grad_zero_frac"))]
    med = statistics.median(finite_g) if finite_g else math.nan
    p99 = finite_g[min(len(finite_g) - 1, int(0.99 * len(finite_g)))] if finite_g else math.nan
    return Measures(
        steps=len(steps),
        first_loss=losses[0] if losses else math.nan,
        final_loss=final_loss(losses, cfg.smooth_steps),
        diverged_at=div_step,
        diverged_how=how,
        oscillation=oscillation(losses, cfg.early_steps),
        steps_to_baseline=reach,
        tokens_to_baseline=reach * tokens_per_step if reach else None,
        grad_norm_median=med,
        grad_norm_max=finite_g[-1] if finite_g else math.nan,
        grad_norm_p99_over_median=p99 / med if finite_g and med > 0 else math.nan,
        nonfinite_grad_steps=sum(1 for g in gnorms if not math.isfinite(g)),
        overflow_steps=sum(1 for s in steps if s.get("overflow") or (s.get("skipped") and "loss_scale" in s)),
        grad_zero_frac=statistics.fmean(zero) if zero else None,
        extra={"target_loss": target_loss},
    )


def diagnose(m: Measures, base: Measures, cfg: ExperimentsConfig, control: Measures | None = None) -> dict[str, str]:
    """Symptom name -> measured evidence, for every symptom this run shows relative to the baseline.

    A ``control`` (the run that differs from this one only in the accident's setting) is the reference
    for the zero-gradient share, and its peak gradient norm is quoted beside this run's."""
    found: dict[str, str] = {}
    if m.diverged_at is not None:
        found["diverged"] = f"at step {m.diverged_at} ({m.diverged_how})"
    elif math.isfinite(m.final_loss) and math.isfinite(m.first_loss) and m.final_loss >= m.first_loss - 0.05:
        found["diverged"] = f"never learned: final loss {m.final_loss:.3f} vs first {m.first_loss:.3f}"
    if math.isfinite(m.oscillation) and math.isfinite(base.oscillation) and base.oscillation > 0 \
            and m.oscillation > cfg.oscillation_ratio * base.oscillation:
        found["oscillation"] = (f"std of step-to-step loss change over the first {cfg.early_steps} steps "
                                f"{m.oscillation:.3f} = {m.oscillation / base.oscillation:.1f}x the baseline's "
                                f"{base.oscillation:.3f}")
    if "diverged" not in found and base.steps_to_baseline:
        if m.steps_to_baseline is None:
            found["slow"] = (f"never reached the target loss {fmt_target(m)} in {m.steps} steps "
                             f"(baseline: step {base.steps_to_baseline}; final loss {m.final_loss:.3f})")
        elif m.steps_to_baseline > cfg.slow_ratio * base.steps_to_baseline:
            found["slow"] = (f"reached the target loss {fmt_target(m)} at step {m.steps_to_baseline}, "
                             f"{m.steps_to_baseline / base.steps_to_baseline:.1f}x the baseline's {base.steps_to_baseline}")
    # above the baseline's typical norm by the ratio, and above the baseline's own worst step
    limit = max(cfg.grad_explosion_ratio * base.grad_norm_median, base.grad_norm_max)
    if m.nonfinite_grad_steps or (math.isfinite(m.grad_norm_max) and m.grad_norm_max > limit):
        vs_control = f"; the control peaked at {control.grad_norm_max:.3g}" if control is not None else ""
        found["grad_explosion"] = (f"max grad norm {m.grad_norm_max:.3g} = "
                                   f"{m.grad_norm_max / base.grad_norm_median:.1f}x the baseline's median "
                                   f"{base.grad_norm_median:.3g} (baseline max {base.grad_norm_max:.3g}{vs_control}); "
                                   f"{m.nonfinite_grad_steps} steps with a non-finite norm")
    if m.overflow_steps:
        found["overflow"] = f"{m.overflow_steps} of {m.steps} steps had inf/NaN gradients"
    if control is not None and m.grad_zero_frac is not None and control.grad_zero_frac is not None:
        if m.grad_zero_frac > cfg.zero_grad_ratio * max(control.grad_zero_frac, 1e-9):
            found["underflow"] = (f"{100 * m.grad_zero_frac:.2f}% of gradient entries exactly zero vs "
                                  f"{100 * control.grad_zero_frac:.2f}% in the control")
    return found
