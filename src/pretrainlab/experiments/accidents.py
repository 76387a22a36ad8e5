"""`pretrainlab experiments accidents`: cause training accidents on purpose, diagnose each from its metrics.

A baseline and one variant per accident train with the same seed, data and
model (the base config: its size is the suite's scale). Guards are switched
off so no accident is rescued. Each run is measured (``diagnose.measure``) and
compared with the baseline; the report gives, per accident, the setting, the
symptom expected and the symptoms seen, the measured evidence, the cause and
the fix, with overlaid loss / gradient-norm curves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from pretrainlab.config import ProjectConfig, load_config
from pretrainlab.errors import UserError
from pretrainlab.experiments.diagnose import SYMPTOMS, diagnose, measure, series, trailing_mean
from pretrainlab.experiments.render import Record, fmt
from pretrainlab.experiments.runner import Variant, require_shards, run_variants
from pretrainlab.fsio import atomic_write_json
from pretrainlab.progress import console


@dataclass(frozen=True)
class Accident:
    title: str
    overrides: Callable[[ProjectConfig], list[str]]
    setting: Callable[[ProjectConfig], str]
    expected: tuple[str, ...]
    cause: str
    fix: str
    control: str | None = None  # the run its zero-gradient share (underflow) is judged against


ACCIDENTS: dict[str, Accident] = {
    "lr_x10": Accident(
        "Learning-rate disaster",
        lambda c: [f"optim.lr={c.optim.lr * c.experiments.lr_multiplier:g}"],
        lambda c: f"optim.lr {c.optim.lr:g} -> {c.optim.lr * c.experiments.lr_multiplier:g} "
                  f"(x{c.experiments.lr_multiplier:g})",
        ("diverged",),
        "Each update is too large for the loss surface's curvature: steps overshoot, the loss rises instead of "
        "falling, logits and activations grow until the loss is worse than the untrained model's or becomes NaN.",
        "Lower the peak LR (find it with `pretrainlab experiments lr-range`); keep warmup and gradient clipping; "
        "for bigger models scale the LR down with width.",
    ),
    "no_warmup": Accident(
        "No warmup",
        lambda c: ["optim.warmup_steps=0"],
        lambda c: f"optim.warmup_steps {c.optim.warmup_steps} -> 0",
        ("early_excess", "oscillation"),
        "AdamW's first updates move every weight by about the LR whatever the gradient's scale (bias-corrected "
        "m/sqrt(v) is close to the gradient's sign while v rests on a handful of gradients). A peak LR chosen for "
        "the warmed-up model is too large for the random init: the first full-size steps overshoot (the gradient "
        "norm jumps right after step 1), and the run falls behind the warmed-up baseline on the same batches for "
        "tens of steps, even where the first steps look fast.",
        "Linear warmup over the first ~1-5% of steps (a few hundred to a few thousand at scale); the closer the "
        "peak LR is to the edge of stability, the more warmup matters.",
    ),
    "batch_1": Accident(
        "Batch size 1",
        lambda c: ["train.micro_batch=1", f"train.global_batch_tokens={c.train.seq_len}"],
        lambda c: f"train.global_batch_tokens {c.train.global_batch_tokens} -> {c.train.seq_len} (one sequence "
                  "per step, same LR and steps)",
        ("oscillation", "slow"),
        "One sequence per step gives a very noisy gradient estimate (variance ~1/batch): the loss curve is "
        "jagged and each step carries far fewer tokens, so the run needs many more steps to reach the same loss.",
        "Raise the global batch (gradient accumulation if memory is short), and scale the LR with the batch.",
    ),
    "no_clip": Accident(
        "No gradient clipping",
        lambda c: ["optim.grad_clip=0", *_clip_lr(c)],
        lambda c: f"optim.grad_clip {c.optim.grad_clip:g} -> 0 (off)" + (
            f"; every run gets simulated bad batches at steps {_steps(c)} (weight {c.experiments.bad_batch_weight:g})"
            if c.experiments.bad_batch_steps else "") + (
            f", at optim.lr {c.optim.lr * c.experiments.no_clip_lr_multiplier:g} (x{c.experiments.no_clip_lr_multiplier:g}; "
            "judged against the clipped run at the same LR)" if c.experiments.no_clip_lr_multiplier > 1 else ""),
        ("loss_spike", "diverged", "grad_explosion"),
        "Without clipping, a rare batch with a huge gradient (here the simulated bad batches, experiments."
        "bad_batch_steps) enters AdamW's moments at full size: its first moment carries the bad direction for ~10 "
        "steps at up to ~0.45x the LR per weight, and its inflated second moment then shrinks every update for tens "
        "of steps. The loss jumps after each spike (the next gradients are larger too) and stalls while Adam "
        "recovers. Clipped, the same batch is cut to optim.grad_clip and is one ordinary step.",
        "Clip the global gradient norm (1.0 is the usual value) and watch grad_norm; spikes that persist call "
        "for a lower LR or skipping the offending batches (guard.*).",
    ),
    "sgd": Accident(
        "SGD instead of AdamW",
        lambda c: ["optim.name=sgd"],
        lambda c: f"optim.name adamw -> sgd (momentum {c.optim.momentum:g}, same LR {c.optim.lr:g})",
        ("slow",),
        "SGD moves every parameter by lr x gradient; transformer gradients differ by orders of magnitude between "
        "parameters (embeddings, norms, attention), so a single LR is far too small for most of them. AdamW "
        "normalizes each parameter's step by its own gradient scale.",
        "Use AdamW (beta2 0.95, eps 1e-8, decoupled weight decay) for transformer pretraining.",
    ),
    "fp16_no_scaling": Accident(
        "fp16 without loss scaling",
        lambda c: ["train.precision=fp16", "train.loss_scaling=false"],
        lambda c: f"train.precision {c.train.precision} -> fp16, train.loss_scaling false",
        ("underflow", "overflow"),
        "fp16 has 5 exponent bits: values below ~6e-8 flush to zero and above 65504 overflow to inf. Without "
        "loss scaling, small activation gradients underflow (lost updates); large ones overflow to inf/NaN.",
        "Use bf16 (fp32's exponent range), or fp16 with dynamic loss scaling (`train.loss_scaling=true`, "
        "torch.amp.GradScaler), which skips overflowing steps and keeps gradients in range.",
        control="bf16",
    ),
    "bf16": Accident(
        "bf16 (control for fp16)",
        lambda c: ["train.precision=bf16"],
        lambda c: f"train.precision {c.train.precision} -> bf16",
        (),
        "bf16 keeps fp32's 8 exponent bits (no underflow/overflow at these magnitudes) with a shorter mantissa; "
        "training should look like the fp32 baseline.",
        "Nothing to fix: this is the control. Prefer bf16 where the hardware supports it.",
    ),
}


def _steps(c: ProjectConfig) -> str:
    return ", ".join(str(x) for x in c.experiments.bad_batch_steps)


def _clip_lr(c: ProjectConfig) -> list[str]:
    mult = c.experiments.no_clip_lr_multiplier
    return [f"optim.lr={c.optim.lr * mult:g}"] if mult > 1 else []


def _clip_control(c: ProjectConfig, names: list[str]) -> str | None:
    """The clipped run at no_clip's LR: the lr_x10 run when it has the same LR, else a 'clip_control' run."""
    ex = c.experiments
    if ex.no_clip_lr_multiplier <= 1:
        return None
    return "lr_x10" if "lr_x10" in names and ex.no_clip_lr_multiplier == ex.lr_multiplier else "clip_control"


def _control_name(c: ProjectConfig, name: str, names: list[str]) -> str | None:
    """The run that differs from accident ``name`` only in its setting, if the suite has one."""
    if name == "no_clip":
        return _clip_control(c, names)
    acc = ACCIDENTS.get(name)
    return acc.control if acc and acc.control in names else None


def _variants(base: ProjectConfig, names: list[str]) -> list[Variant]:
    out = [Variant("baseline", [], record_zero_grads=True)]
    if "no_clip" in names and base.experiments.no_clip_lr_multiplier > 1 and _clip_control(base, names) == "clip_control":
        out.append(Variant("clip_control", _clip_lr(base)))
    for name in names:
        acc = ACCIDENTS[name]
        out.append(Variant(name, acc.overrides(base), record_zero_grads=name in ("fp16_no_scaling", "bf16")))
    return out


def analyze(base: ProjectConfig, results: list[dict]) -> dict:
    """Measures and diagnoses of every run; the baseline's smoothed final loss is the convergence target."""
    ex = base.experiments
    by_name = {r["name"]: r for r in results}
    baseline = by_name["baseline"]
    base_losses = series(baseline["steps"], "loss")
    smoothed = trailing_mean(base_losses, ex.smooth_steps)
    target = smoothed[max(0, round(ex.target_fraction * len(smoothed)) - 1)] if smoothed else math.nan
    base_m = measure(baseline["steps"], ex, target, baseline["global_batch_tokens"], base_losses)
    measures = {"baseline": base_m}
    for r in results[1:]:
        same = r["global_batch_tokens"] == baseline["global_batch_tokens"]
        measures[r["name"]] = measure(r["steps"], ex, target, r["global_batch_tokens"], base_losses, same)
    out = {"target_loss": target, "runs": {}}
    for r in results:
        name = r["name"]
        acc = ACCIDENTS.get(name)
        control = measures.get(_control_name(base, name, list(measures)) or "")
        found = {} if acc is None else diagnose(measures[name], base_m, ex, control)
        expected = list(acc.expected) if acc else []
        reproduced = (not expected and not found) or any(s in found for s in expected)
        out["runs"][name] = {"measures": measures[name].__dict__, "symptoms": found, "expected": expected,
                             "reproduced": reproduced if acc is not None else None}
    return out


def _verdict(info: dict) -> str:
    found, expected = info["symptoms"], info["expected"]
    seen = ", ".join(SYMPTOMS[s] for s in found) or "none"
    if not expected:
        return f"seen: {seen} ({'matches the baseline, as a control should' if not found else 'unexpected for a control'})"
    exp = " or ".join(SYMPTOMS[s] for s in expected)
    return f"expected: {exp}; seen: {seen}" + ("" if info["reproduced"] else " (not reproduced at this scale)")


def build_record(base: ProjectConfig, results: list[dict], analysis: dict) -> Record:
    tc, oc = base.train, base.optim
    rec = Record("Training accidents: what breaks, how it shows, how to fix it")
    rec.h("Setup")
    rec.bullets([
        f"model: d_model {base.model.d_model}, {base.model.n_layers} layers, {base.model.n_heads} heads, "
        f"vocab {base.model.vocab_size or 'from tokenizer'}",
        f"baseline: AdamW lr {oc.lr:g}, warmup {oc.warmup_steps}, clip {oc.grad_clip:g}, {tc.precision}, "
        f"{tc.steps} steps x {tc.global_batch_tokens} tokens (seq {tc.seq_len}), seed {tc.seed}",
        "same seed, data order and model for every run; guards off (guard.enabled=false) so nothing is rescued",
        f"convergence target: the baseline's loss at {100 * base.experiments.target_fraction:g}% of its steps, "
        f"{fmt(analysis['target_loss'])} ({base.experiments.smooth_steps}-step mean)",
        (f"simulated bad batches at steps {_steps(base)} in every run (weight {base.experiments.bad_batch_weight:g}: "
         "the step's inputs against random next tokens, a gradient norm hundreds of times the median; the logged loss "
         "is the real batch's)") if base.experiments.bad_batch_steps else "no simulated bad batches",
    ])
    rec.h("Summary")
    rows = []
    for r in results:
        info = analysis["runs"][r["name"]]
        m = info["measures"]
        rows.append([r["name"], fmt(m["final_loss"]), m["diverged_at"] or "-", m["spike_at"] or "-",
                     fmt(m["early_excess"]), fmt(m["oscillation"]),
                     m["steps_to_baseline"] or "never", fmt(m["grad_norm_max"]), m["grad_excursions"],
                     fmt(m["after_bad_grad"]), m["overflow_steps"],
                     fmt(100 * m["grad_zero_frac"]) + "%" if m["grad_zero_frac"] is not None else "-",
                     "(reference)" if r["name"] not in ACCIDENTS else ", ".join(SYMPTOMS[s] for s in info["symptoms"]) or "none"])
    ex = base.experiments
    rec.table(["run", "final loss", "diverged at", "loss spike at", f"early excess (first {ex.early_steps})",
               f"oscillation (first {ex.early_steps})", "steps to target", "max grad norm",
               f"steps > {ex.excursion_ratio:g}x median norm", "grad norm after bad batches", "overflow steps",
               "zero grads", "symptoms"], rows)
    loss = {r["name"]: [(s["step"], s["loss"]) for s in r["steps"]] for r in results}
    gn = {r["name"]: [(s["step"], s["grad_norm"]) for s in r["steps"]] for r in results}
    rec.chart("loss", loss, "training loss (all runs)", "step", "loss")
    rec.chart("grad_norm", gn, "gradient norm before clipping", "step", "grad norm", log_y=True)
    early = {k: v[: 3 * base.experiments.early_steps] for k, v in loss.items()}
    rec.chart("loss_early", early, f"loss, first {3 * base.experiments.early_steps} steps", "step", "loss")
    for r in results[1:]:
        if r["name"] not in ACCIDENTS:
            continue  # a control run: shown in the table and curves
        acc = ACCIDENTS[r["name"]]
        info = analysis["runs"][r["name"]]
        rec.h(f"{r['name']}: {acc.title}")
        evidence = [f"{SYMPTOMS[s]}: {e}" for s, e in info["symptoms"].items()] or ["no symptom crossed its threshold"]
        m = info["measures"]
        bm = analysis["runs"]["baseline"]["measures"]
        after = (f", grad norm in the {ex.diverge_window} steps after each bad batch {fmt(m['after_bad_grad'])} "
                 f"(baseline {fmt(bm['after_bad_grad'])})" if m["after_bad_grad"] is not None else "")
        evidence.append(f"all measures: final loss {fmt(m['final_loss'])} (baseline {fmt(bm['final_loss'])}), "
                        f"largest loss excess over the baseline {fmt(m['peak_excess'])} nats at step "
                        f"{m['peak_excess_step']}, median grad norm {fmt(m['grad_norm_median'])} (baseline "
                        f"{fmt(bm['grad_norm_median'])}), max {fmt(m['grad_norm_max'])} (baseline "
                        f"{fmt(bm['grad_norm_max'])}), steps above {ex.excursion_ratio:g}x the own median norm "
                        f"{m['grad_excursions']} (baseline {bm['grad_excursions']}){after}, early oscillation "
                        f"{fmt(m['oscillation'])} (baseline {fmt(bm['oscillation'])})")
        control = _control_name(base, r["name"], [x["name"] for x in results])
        if control and control in analysis["runs"]:
            cm = analysis["runs"][control]["measures"]
            evidence.append(f"its control {control} (differs only in this setting): final loss {fmt(cm['final_loss'])}, "
                            f"max grad norm {fmt(cm['grad_norm_max'])}")
        if r.get("error"):
            evidence.append(f"the run stopped: {r['error']}")
        if r["name"] == "no_clip" and not info["reproduced"] and not ex.bad_batch_steps:
            evidence.append("clipping only matters once a gradient spikes and small runs rarely spike on their own: "
                            "set experiments.bad_batch_steps (e.g. [40, 80, 120]) to give every run a few")
        rec.bullets([f"**setting**: {acc.setting(base)}", f"**symptom**: {_verdict(info)}",
                     "**evidence**: " + "; ".join(evidence), f"**cause**: {acc.cause}", f"**fix**: {acc.fix}"])
        # the run against the baseline (and its control), where its symptom shows: the first steps for an
        # early-phase accident, else the whole run
        shown = ["baseline", r["name"], *([control] if control and control in loss else [])]
        cut = 3 * ex.early_steps if acc.expected[:1] == ("early_excess",) else None
        rec.chart(f"loss_{r['name']}", {k: loss[k][:cut] for k in shown},
                  f"loss: {r['name']} vs baseline" + (f" (first {cut} steps)" if cut else ""), "step", "loss")
    rec.h("How the symptoms are measured")
    rec.bullets([
        "every run sees the baseline's batches at the same step (except batch_1, which draws fewer per step), so "
        "loss differences between runs at the same step are the setting's effect, not the data's; for batch_1 the "
        f"comparisons average over {ex.smooth_steps} steps instead of {ex.diverge_window}",
        f"diverged: a non-finite loss, or the {ex.diverge_window}-step mean loss {ex.diverge_margin} nats above the "
        "untrained model's (the first step's loss), or never getting below the first loss; the step is reported",
        f"loss spike: the {ex.diverge_window}-step mean loss rising {ex.diverge_margin} nats above its best so far and "
        "above the baseline's at the same step (a bump the baseline shares is the data's); the largest excess over "
        "the baseline and the excess at the end tell whether it recovered",
        f"worse early phase: within the first {ex.early_steps} steps, the {ex.diverge_window}-step mean loss more "
        f"than {ex.early_margin} nats above the baseline's at the same step",
        f"early oscillation: std of step-to-step loss changes over the first {ex.early_steps} steps, above "
        f"{ex.oscillation_ratio}x the baseline's",
        f"slow convergence: steps until the {ex.smooth_steps}-step mean loss reaches the convergence target, "
        f"more than {ex.slow_ratio}x the baseline's (or never)",
        f"gradient-norm explosion: a step's (pre-clipping) norm above {ex.grad_explosion_ratio:g}x the baseline's "
        "largest, or a non-finite norm; excursions: steps above "
        f"{ex.excursion_ratio:g}x the run's own median; the simulated bad-batch steps themselves are left out of "
        f"these (their norm is the injected spike), the mean norm over the {ex.diverge_window} steps after each "
        "is shown instead",
        "overflow: steps with inf/NaN gradients; underflow: share of exactly-zero gradient entries above "
        f"{ex.zero_grad_ratio}x the control's",
    ])
    return rec


def run_accidents(base: ProjectConfig) -> dict:
    """Run the baseline and the configured accidents, write report.html/.md and accidents.json; return the analysis."""
    names = list(dict.fromkeys(base.experiments.accidents))
    if "fp16_no_scaling" in names and "bf16" not in names:
        names.append("bf16")  # fp16's control
    if not names:
        raise UserError("experiments.accidents is empty; name at least one accident, e.g. --set experiments.accidents=[lr_x10]")
    base = load_config(None, ["guard.enabled=false"], base=base.model_dump(mode="json"))
    require_shards(base)
    out = (base.experiments.out or base.workdir / "experiments" / "accidents").resolve()
    variants = _variants(base, names)
    console.print(f"accident suite: baseline + {len(names)} runs x {base.train.steps} steps -> {out}")
    results = run_variants(base, variants, out, base.experiments.parallel)
    analysis = analyze(base, results)
    rec = build_record(base, results, analysis)
    html_path, md_path = rec.write(out)
    atomic_write_json(out / "accidents.json", {"analysis": analysis,
                                               "runs": [{k: v for k, v in r.items() if k != "config"} for r in results]})
    for name, info in analysis["runs"].items():
        if name in ACCIDENTS:
            console.print(f"  {name:<16} {_verdict(info)}")
    console.print(f"report: {html_path} (markdown: {md_path})")
    return {"out": str(out), "report": str(html_path), "markdown": str(md_path), **analysis}

