"""The accident suite and the LR range test: diagnoses on synthetic curves, then tiny real runs."""

from __future__ import annotations

import math

import pytest

from pretrainlab.cli import main
from pretrainlab.experiments.config import ExperimentsConfig
from pretrainlab.experiments.diagnose import diagnose, divergence_step, measure, oscillation, steps_to_reach
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


def test_a_loss_that_climbs_back_up_has_diverged_but_a_bump_the_baseline_shares_has_not():
    base = decay(40)
    rising = base[:15] + [base[14] + 0.2 * k for k in range(1, 26)]
    step, how = divergence_step(rising, 0.5, 3, base)
    assert step is not None and 15 < step < 25 and "rose above its best" in how
    bumped = [x + (1.0 if 20 <= i < 26 else 0.0) for i, x in enumerate(base)]
    assert divergence_step(bumped, 0.5, 3, bumped)[0] is None  # the same bump in the baseline: the data, not the run


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
    assert list(found) == ["slow"] and "never reached the target loss" in found["slow"]

    nan_run = measure(steps(base_losses[:10] + [math.nan] * (n - 10), [1.0] * 10 + [math.nan] * (n - 10)),
                      CFG, target, 100, base_losses)
    found = diagnose(nan_run, base, CFG)
    assert "at step 11" in found["diverged"] and "grad_explosion" in found and "slow" not in found

    spiky = measure(steps(base_losses, [1.0] * 30 + [40.0] + [1.0] * (n - 31)), CFG, target, 100, base_losses)
    assert "40.0x the baseline's median" in diagnose(spiky, base, CFG)["grad_explosion"]

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
def test_tiny_accident_suite_diagnoses_the_expected_symptoms(tiny_cfg, tmp_path):
    out = tmp_path / "accidents"
    cfg = tiny_cfg("train.steps=30", "optim.lr=3e-2", "optim.warmup_steps=5", f"experiments.out={out}",
                   "experiments.accidents=lr_x10,batch_1,no_clip,sgd,fp16_no_scaling",
                   "experiments.no_clip_lr_multiplier=10", "guard.enabled=true")
    from pretrainlab.experiments.accidents import run_accidents

    res = run_accidents(cfg)
    runs = res["runs"]
    assert list(runs) == ["baseline", "lr_x10", "batch_1", "no_clip", "sgd", "fp16_no_scaling", "bf16"]
    assert "diverged" in runs["lr_x10"]["symptoms"]
    assert {"oscillation", "slow"} & set(runs["batch_1"]["symptoms"])
    assert "slow" in runs["sgd"]["symptoms"]
    assert "underflow" in runs["fp16_no_scaling"]["symptoms"]
    base_max = runs["baseline"]["measures"]["grad_norm_max"]
    assert runs["no_clip"]["measures"]["grad_norm_max"] > base_max
    assert "grad_explosion" in runs["no_clip"]["symptoms"]
    assert not (out / "runs" / "clip_control").exists()  # lr_x10 already is the clipped run at that LR
    # guards were switched off for the suite even though the base config enabled them
    assert not any(r["guard_events"] for r in [__import__("json").loads((out / "runs" / n / "experiment_result.json")
                                                                        .read_text()) for n in runs])
    md = (out / "report.md").read_text()
    for name in ("lr_x10", "batch_1", "no_clip", "sgd", "fp16_no_scaling", "bf16"):
        assert f"## {name}:" in md
    assert md.count("**cause**") == 6 and md.count("**fix**") == 6 and "![training loss (all runs)](loss.svg)" in md
    html = (out / "report.html").read_text()
    assert "<svg" in html and "lr_x10" in html and (out / "loss.svg").is_file()

    again = run_accidents(cfg)  # finished runs are reused, diagnoses unchanged
    assert again["runs"]["lr_x10"]["symptoms"] == runs["lr_x10"]["symptoms"]


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
    from pretrainlab.train.trainer import train

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
