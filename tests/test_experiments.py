"""The accident suite and the LR range test: diagnoses on synthetic curves, then tiny real runs."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from pretrainlab.cli import main
from pretrainlab.experiments.config import ExperimentsConfig
from pretrainlab.experiments.diagnose import (
    diagnose, divergence_step, measure, oscillation, paired_excess, spike_step, steps_to_reach,
)
from pretrainlab.experiments.lr_range import ramp_lr, suggest

CFG = ExperimentsConfig(early_steps=10, smooth_steps=5, diverge_window=3)


def steps(losses, gnorms=None, **extra):
    gnorms = gnorms or [1.0] * len(losses)
    return [{"step": i + 1, "loss": x, "grad_norm": g, **{k: v[i] for k, v in extra.items()}}
            for i, (x, g) in enumerate(zip(losses, gnorms))]


def decay(n, start=6.0, end=3.0):
    return [end + (start - end) * math.exp(-i / (n / 4)) for i in range(n)]


# --------------------------------------------------------------------------- diagnoses on known curves


def test_divergence_is_the_first_non_finite_step():
    assert divergence_step([5.0, 4.0, 3.9, math.nan, math.nan], 0.5, 3) == (4, "non-finite loss")


def test_a_run_doing_worse_than_the_untrained_model_has_diverged():
    blown = [6.0, 5.0, 4.5, 6.0, 7.0, 8.0, 9.0]
    step, how = divergence_step(blown, 0.5, 3)
    assert step == 6 and "above the untrained model's 6.000" in how  # mean(6, 7, 8) = 7 > 6.5; mean(4.5, 6, 7) is not
    assert divergence_step(decay(40), 0.5, 3) == (None, "")


def test_a_loss_that_climbs_back_up_is_a_spike_but_a_bump_the_baseline_shares_is_not():
    base = decay(40)
    rising = base[:15] + [base[14] + 0.2 * k for k in range(1, 26)]
    step, how = spike_step(rising, 0.5, 3, base)
    assert step is not None and 15 < step < 25 and "rose above its best" in how
    bumped = [x + (1.0 if 20 <= i < 26 else 0.0) for i, x in enumerate(base)]
    assert spike_step(bumped, 0.5, 3, bumped)[0] is None  # the same bump in the baseline: the data, not the run


def test_paired_excess_cancels_the_data_and_keeps_the_settings_effect():
    data = [5.0, 3.0, 6.0, 2.0, 5.5, 3.5, 4.0, 4.0]  # batch difficulty: jumps of 3 nats step to step
    setback = [0, 0, 0.5, 0.75, 0.25, 0, 0, 0]  # worse at steps 3-5, most at step 4
    behind = [x + d for x, d in zip(data, setback)]
    assert paired_excess(behind, data, 1) == (pytest.approx(0.75), 4)
    assert paired_excess(behind, data, 3) == (pytest.approx(0.5), 5)  # the 3-step means differ most at step 5
    assert paired_excess(behind, data, 1, upto=2) == (pytest.approx(0.0), 1)  # only the first 2 steps compared
    assert paired_excess(data, data, 3)[0] == 0


def test_oscillation_measures_jagged_early_steps():
    smooth = decay(30)
    jagged = [x + (0.4 if i % 2 else -0.4) for i, x in enumerate(smooth)]
    assert oscillation(jagged, 10) > 5 * oscillation(smooth, 10)


def test_steps_to_reach_uses_the_trailing_mean():
    losses = [5, 4, 3, 2, 1, 1, 1]
    assert steps_to_reach(losses, 2.0, 1) == 4
    assert steps_to_reach(losses, 2.0, 3) == 5  # mean(3, 2, 1) = 2
    assert steps_to_reach(losses, 0.5, 1) is None


def test_diagnose_names_each_symptom_with_its_evidence():
    n = 60
    base_losses = decay(n)
    target = base_losses[n // 2]
    base = measure(steps(base_losses, [1.0] * n, grad_zero_frac=[0.001] * n), CFG, target, 100)

    slow = measure(steps(decay(n, 6.0, 4.5)), CFG, target, 100, base_losses)
    found = diagnose(slow, base, CFG)
    assert set(found) == {"slow", "early_excess"} and "never reached the target loss" in found["slow"]

    nan_run = measure(steps(base_losses[:10] + [math.nan] * (n - 10), [1.0] * 10 + [math.nan] * (n - 10)),
                      CFG, target, 100, base_losses)
    found = diagnose(nan_run, base, CFG)
    assert "at step 11" in found["diverged"] and "grad_explosion" in found and "slow" not in found

    spiky = measure(steps(base_losses, [1.0] * 30 + [40.0] + [1.0] * (n - 31)), CFG, target, 100, base_losses)
    assert "40.0x the baseline's largest" in diagnose(spiky, base, CFG)["grad_explosion"]
    # the same spike on a simulated bad-batch step is the injected one, not the run's own
    injected = measure(steps(base_losses, [1.0] * 30 + [40.0] + [1.0] * (n - 31),
                             bad_batch=[i == 30 for i in range(n)]), CFG, target, 100, base_losses)
    assert injected.grad_norm_max == 1.0 and diagnose(injected, base, CFG) == {}

    late = decay(n)[:20] + [x + 0.8 for x in decay(n)[20:]]  # 0.8 nats behind from step 21: a setback, not divergence
    found = diagnose(measure(steps(late), CFG, target, 100, base_losses), base, CFG)
    assert "loss_spike" in found and "diverged" not in found and "+0.80 at the end" in found["loss_spike"]
    early = [x + (0.5 if 3 <= i < 9 else 0.0) for i, x in enumerate(base_losses)]  # behind in the first steps only
    found = diagnose(measure(steps(early), CFG, target, 100, base_losses), base, CFG)
    assert "0.50 nats above the baseline's" in found["early_excess"]
    assert not {"diverged", "loss_spike", "slow"} & set(found)  # it caught up: only the early phase was worse

    control = measure(steps(base_losses, grad_zero_frac=[0.001] * n), CFG, target, 100)
    fp16 = measure(steps(base_losses, grad_zero_frac=[0.2] * n, overflow=[i == 5 for i in range(n)]), CFG, target, 100)
    found = diagnose(fp16, base, CFG, control)
    assert "20.00% of gradient entries exactly zero" in found["underflow"]
    assert found["overflow"] == f"1 of {n} steps had inf/NaN gradients"
    assert diagnose(control, base, CFG, control) == {}  # identical to its reference: nothing to report


# --------------------------------------------------------------------------- LR range test maths


def test_ramp_is_exponential_between_the_ends():
    assert ramp_lr(0, 101, 1e-5, 1e-1) == pytest.approx(1e-5)
    assert ramp_lr(50, 101, 1e-5, 1e-1) == pytest.approx(1e-3)
    assert ramp_lr(100, 101, 1e-5, 1e-1) == pytest.approx(1e-1)


def test_suggested_lr_is_the_steepest_descent_before_the_minimum():
    lrs = [ramp_lr(i, 400, 1e-6, 1.0) for i in range(400)]
    # loss falls fastest around LR 1e-3 (a tanh step in log10 LR), bottoms out, then blows up past 1e-1
    losses = [5.0 - 2.0 * math.tanh(2 * (math.log10(lr) + 3)) + (50 * (lr - 0.1) if lr > 0.1 else 0) for lr in lrs]
    sug = suggest(lrs, losses)
    assert 3e-4 < sug["suggested_lr"] < 3e-3  # the EMA lags a little behind the raw curve
    assert sug["lr_at_min_loss"] > sug["suggested_lr"]
    assert "steepest descent" in sug["rule"]


# --------------------------------------------------------------------------- real tiny runs


@pytest.mark.slow
def test_tiny_accident_suite_reproduces_every_accident_on_real_runs(tiny_cfg, tmp_path):
    # lr 0.1 is aggressive but stable for the fixture's model with 5 warmup steps (at 0.2 the baseline
    # itself blows up; at 0.12+ SGD with momentum is no longer slow on this easy data); two simulated
    # bad batches give clipping something to absorb
    out = tmp_path / "accidents"
    cfg = tiny_cfg("train.steps=30", "optim.lr=0.1", "optim.warmup_steps=5", "train.log_every=10",
                   f"experiments.out={out}", "experiments.bad_batch_steps=12,20", "guard.enabled=true")
    from pretrainlab.experiments.accidents import run_accidents

    res = run_accidents(cfg)
    runs = res["runs"]
    assert list(runs) == ["baseline", "lr_x10", "no_warmup", "batch_1", "no_clip", "sgd", "fp16_no_scaling", "bf16"]
    sym = {name: set(r["symptoms"]) for name, r in runs.items()}
    m = {name: r["measures"] for name, r in runs.items()}
    base = m["baseline"]
    assert base["diverged_at"] is None and base["spike_at"] is None  # the baseline itself is healthy

    assert "diverged" in sym["lr_x10"] and m["lr_x10"]["grad_norm_max"] > 4 * base["grad_norm_max"]
    # no warmup: the first full-LR steps overshoot and the run falls behind the baseline on the same batches
    assert "early_excess" in sym["no_warmup"] and m["no_warmup"]["early_excess_step"] <= 10
    assert not {"diverged", "loss_spike"} & sym["no_warmup"]  # a worse start, not a blow-up
    assert {"oscillation", "slow"} & sym["batch_1"]
    # no clipping: the bad batches go through whole; the loss jumps and the next gradients are larger
    assert {"loss_spike", "diverged"} & sym["no_clip"]
    assert m["no_clip"]["peak_excess"] > 1.0 and m["no_clip"]["final_loss"] > base["final_loss"] + 0.5
    assert m["no_clip"]["after_bad_grad"] > 2 * base["after_bad_grad"]
    assert m["no_clip"]["grad_norm_max"] > base["grad_norm_max"]
    assert "slow" in sym["sgd"]
    assert "underflow" in sym["fp16_no_scaling"] and m["fp16_no_scaling"]["grad_zero_frac"] > 0
    assert sym["bf16"] == set()  # the control matches the baseline
    assert all(info["reproduced"] for name, info in runs.items() if name not in ("baseline", "bf16"))
    assert not (out / "runs" / "clip_control").exists()  # no_clip runs at the baseline's LR

    saved = {n: json.loads((out / "runs" / n / "experiment_result.json").read_text()) for n in runs}
    # guards were switched off for the suite even though the base config enabled them
    assert not any(r["guard_events"] for r in saved.values())
    # every run saw the same bad batches; the logged loss is the real batch's, not the injected term's
    for r in saved.values():
        assert [s["step"] for s in r["steps"] if s.get("bad_batch")] == [12, 20]
    b = saved["baseline"]["steps"]
    assert b[11]["grad_norm"] > 20 * statistics.median(s["grad_norm"] for s in b) and b[11]["loss"] < 6.5

    md = (out / "report.md").read_text()
    for name in ("lr_x10", "no_warmup", "batch_1", "no_clip", "sgd", "fp16_no_scaling", "bf16"):
        assert f"## {name}:" in md
    assert md.count("**cause**") == 7 and md.count("**fix**") == 7 and "![training loss (all runs)](loss.svg)" in md
    assert "not reproduced" not in md and "simulated bad batches at steps 12, 20" in md
    html = (out / "report.html").read_text()
    assert "<svg" in html and "lr_x10" in html and (out / "loss.svg").is_file()

    again = run_accidents(cfg)  # finished runs are reused, diagnoses unchanged
    assert {n: r["symptoms"] for n, r in again["runs"].items()} == {n: r["symptoms"] for n, r in runs.items()}


def test_no_clip_at_a_stressed_lr_is_judged_against_a_clipped_run_at_that_lr(tiny_cfg):
    from pretrainlab.experiments.accidents import _variants

    cfg = tiny_cfg("optim.lr=0.01", "experiments.no_clip_lr_multiplier=3")
    runs = {v.name: v.overrides for v in _variants(cfg, ["lr_x10", "no_clip"])}
    assert runs["clip_control"] == ["optim.lr=0.03"] and runs["no_clip"] == ["optim.grad_clip=0", "optim.lr=0.03"]
    same = tiny_cfg("experiments.no_clip_lr_multiplier=10")  # lr_x10 already is the clipped run at that LR
    assert "clip_control" not in {v.name for v in _variants(same, ["lr_x10", "no_clip"])}


@pytest.mark.slow
def test_lr_range_test_suggests_an_lr_inside_the_ramp(tiny_cfg, tmp_path):
    out = tmp_path / "lr"
    rc = main(["experiments", "lr-range", "--set", f"workdir={tiny_cfg().workdir}", *sum(
        (["--set", o] for o in ("model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2",
                                "model.max_seq_len=32", "train.seq_len=32", "train.micro_batch=4",
                                "train.global_batch_tokens=256", "train.threads=1", "log.peak_flops=1e11",
                                "train.val_batches=1", f"experiments.out={out}")), []),
        "--lr-min", "1e-4", "--lr-max", "3", "--lr-steps", "60"])
    assert rc == 0
    import json

    res = json.loads((out / "lr_range.json").read_text())
    assert 1e-4 < res["suggested_lr"] < 3 and res["suggested_lr"] <= res["lr_at_min_loss"]
    assert res["lrs"][0] == pytest.approx(1e-4) and len(res["lrs"]) <= 60
    md = (out / "report.md").read_text()
    assert "Suggested peak LR" in md and "steepest" in md and (out / "lr_range.svg").is_file()


def test_missing_shards_is_one_line_pointing_at_the_quickstart(tmp_path, capsys):
    rc = main(["experiments", "accidents", "--workdir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "pretrainlab quickstart" in err


def test_unknown_accident_is_a_config_error(capsys):
    rc = main(["experiments", "accidents", "--set", "experiments.accidents=lr_x100"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown accident 'lr_x100'" in err


def test_sgd_and_fp16_with_loss_scaling_train_end_to_end(tiny_cfg):
    import torch

    from pretrainlab.experiments.runner import StepRecorder
    from pretrainlab.train.callbacks import Callback
    from pretrainlab.recipes import train

    seen = {}

    class Peek(Callback):
        def on_train_start(self, ctx):
            seen["optimizer"] = type(ctx.optimizer)
            seen["momentum"] = ctx.optimizer.param_groups[0]["momentum"]

    rec = StepRecorder(record_zero_grads=True)
    cfg = tiny_cfg("train.steps=4", "train.precision=fp16", "train.loss_scaling=true", "optim.name=sgd",
                   "optim.momentum=0.8", "guard.enabled=false", "train.val_every=4", "checkpoint.every=4")
    summary = train(cfg, resume="never", callbacks=[Peek(), rec])
    assert seen == {"optimizer": torch.optim.SGD, "momentum": 0.8}
    assert len(rec.steps) == 4 and all(s["loss_scale"] > 1 and s["overflow"] is False for s in rec.steps)
    assert all(0 <= s["grad_zero_frac"] < 1 for s in rec.steps) and math.isfinite(summary["final_val_loss"])
