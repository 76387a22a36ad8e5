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
    "loss_spike": "loss spike",
    "oscillation": "early oscillation",
    "early_excess": "worse early phase",
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


def divergence_step(losses: list[float], margin: float, window: int) -> tuple[int | None, str]:
    """First 1-based step where the loss is non-finite, or its trailing mean stands ``margin`` nats above the
    first step's loss: the run is doing worse than the untrained model (for a fresh init, a uniform guess)."""
    sm = trailing_mean(losses, window)
    start = losses[0] if losses and math.isfinite(losses[0]) else math.nan
    for i, (x, s) in enumerate(zip(losses, sm)):
        if not math.isfinite(x):
            return i + 1, "non-finite loss"
        if i + 1 >= window and math.isfinite(s) and s > start + margin:
            return i + 1, f"{window}-step mean loss {s:.3f} above the untrained model's {start:.3f} + {margin}"
    return None, ""


def spike_step(losses: list[float], margin: float, window: int,
               baseline: list[float] | None = None) -> tuple[int | None, str]:
    """First 1-based step where the loss's trailing mean rose ``margin`` nats above its own best so far while
    also standing ``margin`` above the baseline's trailing mean at that step.

    The second condition keeps a shared bump (a hard stretch of the same data order) from counting:
    all runs see the same batches at the same step.
    """
    sm = trailing_mean(losses, window)
    bsm = trailing_mean(baseline, window) if baseline else None
    best = math.inf
    for i, s in enumerate(sm):
        if i + 1 < window or not math.isfinite(s):
            continue
        ref = bsm[i] if bsm is not None and i < len(bsm) and math.isfinite(bsm[i]) else None
        if s > best + margin and (ref is None or s > ref + margin):
            vs = f", baseline {ref:.3f}" if ref is not None else ""
            return i + 1, f"{window}-step mean loss {s:.3f} rose above its best {best:.3f} + {margin}{vs}"
        best = min(best, s)
    return None, ""


def paired_excess(losses: list[float], reference: list[float], window: int,
                  upto: int | None = None) -> tuple[float, int | None]:
    """Largest (run - reference) difference of ``window``-step trailing means over the first ``upto`` steps,
    and its 1-based step. Both runs saw the same batches at each step, so the data's own ups and downs
    cancel and what is left is the setting's effect. (NaN, None) when no step compares."""
    sm, ref = trailing_mean(losses, window), trailing_mean(reference, window)
    best, at = math.nan, None
    for i in range(window - 1, min(len(sm), len(ref), upto or len(sm))):
        d = sm[i] - ref[i]
        if math.isfinite(d) and not d <= best:  # the first finite difference, then larger ones
            best, at = d, i + 1
    return best, at


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
    spike_at: int | None
    spike_how: str
    peak_excess: float  # largest paired loss excess over the baseline, nats (0 for the baseline itself)
    peak_excess_step: int | None
    final_excess: float  # the same difference over the last smooth_steps steps
    oscillation: float
    early_excess: float  # largest paired loss excess over the baseline in the first early_steps
    early_excess_step: int | None
    early_grad_max: float
    steps_to_baseline: int | None
    tokens_to_baseline: int | None
    grad_norm_median: float
    grad_norm_max: float
    grad_norm_p99_over_median: float
    grad_excursions: int  # steps above excursion_ratio x the run's own median
    after_bad_grad: float | None  # mean grad norm over the diverge_window steps after each bad batch
    nonfinite_grad_steps: int
    overflow_steps: int
    grad_zero_frac: float | None
    extra: dict = field(default_factory=dict)


def measure(steps: list[dict], cfg: ExperimentsConfig, target_loss: float | None, tokens_per_step: int,
            baseline_losses: list[float] | None = None, same_data: bool = True) -> Measures:
    """``same_data``: the run draws the baseline's batches step for step (same batch geometry); if not, the
    loss comparisons average over ``smooth_steps`` instead of ``diverge_window``, since the noise differs.

    Gradient-norm statistics leave out the simulated bad batches (``bad_batch`` steps): their norm is the
    injected spike, the same in every run; what a run does with it shows in the steps after."""
    losses = series(steps, "loss")
    bad = {i for i, s in enumerate(steps) if s.get("bad_batch")}
    gnorms = series(steps, "grad_norm")
    own = [g for i, g in enumerate(gnorms) if i not in bad]
    finite_g = sorted(g for g in own if math.isfinite(g))
    window = cfg.diverge_window if same_data else max(cfg.diverge_window, cfg.smooth_steps)
    div_step, how = divergence_step(losses, cfg.diverge_margin, window)
    spike, spike_how = spike_step(losses, cfg.diverge_margin, window, baseline_losses)
    ref = baseline_losses if baseline_losses is not None else losses
    peak, peak_at = paired_excess(losses, ref, window)
    early, early_at = paired_excess(losses, ref, window, cfg.early_steps)
    reach = steps_to_reach(losses, target_loss, cfg.smooth_steps) if target_loss is not None else None
    zero = [s["grad_zero_frac"] for s in steps if _finite(s.get("grad_zero_frac"))]
    med = statistics.median(finite_g) if finite_g else math.nan
    p99 = finite_g[min(len(finite_g) - 1, int(0.99 * len(finite_g)))] if finite_g else math.nan
    after = [g for b in sorted(bad) for g in gnorms[b + 1: b + 1 + cfg.diverge_window] if math.isfinite(g)]
    head_g = [g for i, g in enumerate(gnorms[: cfg.early_steps]) if i not in bad and math.isfinite(g)]
    n = min(len(losses), len(ref))
    return Measures(
        steps=len(steps),
        first_loss=losses[0] if losses else math.nan,
        final_loss=final_loss(losses, cfg.smooth_steps),
        diverged_at=div_step,
        diverged_how=how,
        spike_at=spike,
        spike_how=spike_how,
        peak_excess=peak,
        peak_excess_step=peak_at,
        final_excess=final_loss(losses[:n], cfg.smooth_steps) - final_loss(ref[:n], cfg.smooth_steps),
        oscillation=oscillation(losses, cfg.early_steps),
        early_excess=early,
        early_excess_step=early_at,
        early_grad_max=max(head_g) if head_g else math.nan,
        steps_to_baseline=reach,
        tokens_to_baseline=reach * tokens_per_step if reach else None,
        grad_norm_median=med,
        grad_norm_max=finite_g[-1] if finite_g else math.nan,
        grad_norm_p99_over_median=p99 / med if finite_g and med > 0 else math.nan,
        grad_excursions=sum(1 for g in finite_g if g > cfg.excursion_ratio * med),
        after_bad_grad=statistics.fmean(after) if after else None,
        nonfinite_grad_steps=sum(1 for g in own if not math.isfinite(g)),
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
        found["diverged"] = (f"at step {m.diverged_at} ({m.diverged_how}); final loss {m.final_loss:.3f}, "
                             f"{m.final_excess:+.2f} nats vs the baseline")
    elif math.isfinite(m.final_loss) and math.isfinite(m.first_loss) and m.final_loss >= m.first_loss - 0.05:
        found["diverged"] = f"never learned: final loss {m.final_loss:.3f} vs first {m.first_loss:.3f}"
    if m.spike_at is not None and "diverged" not in found:
        after = ""
        if m.after_bad_grad is not None and base.after_bad_grad:
            after = (f"; grad norm in the {cfg.diverge_window} steps after each bad batch {m.after_bad_grad:.3g} = "
                     f"{m.after_bad_grad / base.after_bad_grad:.1f}x the baseline's {base.after_bad_grad:.3g}")
        found["loss_spike"] = (f"at step {m.spike_at} ({m.spike_how}); largest excess over the baseline "
                               f"{m.peak_excess:.2f} nats at step {m.peak_excess_step}, {m.final_excess:+.2f} "
                               f"at the end{after}")
    if math.isfinite(m.oscillation) and math.isfinite(base.oscillation) and base.oscillation > 0 \
            and m.oscillation > cfg.oscillation_ratio * base.oscillation:
        found["oscillation"] = (f"std of step-to-step loss change over the first {cfg.early_steps} steps "
                                f"{m.oscillation:.3f} = {m.oscillation / base.oscillation:.1f}x the baseline's "
                                f"{base.oscillation:.3f}")
    if math.isfinite(m.early_excess) and m.early_excess > cfg.early_margin:
        found["early_excess"] = (f"loss {m.early_excess:.2f} nats above the baseline's at step {m.early_excess_step} "
                                 f"(trailing means, same batches; first {cfg.early_steps} steps); early peak grad norm "
                                 f"{m.early_grad_max:.3g} vs the baseline's {base.early_grad_max:.3g}")
    if "diverged" not in found and base.steps_to_baseline:
        if m.steps_to_baseline is None:
            found["slow"] = (f"never reached the target loss {fmt_target(m)} in {m.steps} steps "
                             f"(baseline: step {base.steps_to_baseline}; final loss {m.final_loss:.3f})")
        elif m.steps_to_baseline > cfg.slow_ratio * base.steps_to_baseline:
            found["slow"] = (f"reached the target loss {fmt_target(m)} at step {m.steps_to_baseline}, "
                             f"{m.steps_to_baseline / base.steps_to_baseline:.1f}x the baseline's {base.steps_to_baseline}")
    # far above the worst step of the healthy run: a run that only wanders off the baseline's trajectory
    # (a control, a near-copy) has a different largest step, not a multiple of it
    limit = cfg.grad_explosion_ratio * base.grad_norm_max
    if m.nonfinite_grad_steps or (math.isfinite(m.grad_norm_max) and m.grad_norm_max > limit):
        vs_control = f"; the control peaked at {control.grad_norm_max:.3g}" if control is not None else ""
        found["grad_explosion"] = (f"max grad norm {m.grad_norm_max:.3g} = "
                                   f"{m.grad_norm_max / base.grad_norm_max:.1f}x the baseline's largest "
                                   f"{base.grad_norm_max:.3g} (baseline median {base.grad_norm_median:.3g}{vs_control}); "
                                   f"{m.grad_excursions} steps above {cfg.excursion_ratio:g}x its own median "
                                   f"(baseline {base.grad_excursions}); {m.nonfinite_grad_steps} steps with a "
                                   "non-finite norm")
    if m.overflow_steps:
        found["overflow"] = f"{m.overflow_steps} of {m.steps} steps had inf/NaN gradients"
    if control is not None and m.grad_zero_frac is not None and control.grad_zero_frac is not None:
        if m.grad_zero_frac > cfg.zero_grad_ratio * max(control.grad_zero_frac, 1e-9):
            found["underflow"] = (f"{100 * m.grad_zero_frac:.2f}% of gradient entries exactly zero vs "
                                  f"{100 * control.grad_zero_frac:.2f}% in the control")
    return found
