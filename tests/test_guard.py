"""Guards: bad steps are skipped, repeated ones roll back and skip data, bad trends pause the run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from pretrainlab.errors import TrainingPaused, TrainingStopped
from pretrainlab.fsio import iter_jsonl
from pretrainlab.train import checkpoint as ckpt
from pretrainlab.train.callbacks import Callback
from pretrainlab.recipes import train


def events(run_dir, name=None):
    evs = list(iter_jsonl(run_dir / "events.jsonl"))
    return [e for e in evs if name is None or e["event"] == name]


def train_steps(run_dir):
    return [r for r in iter_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]


class ScaleLossOnBatches(Callback):
    """Makes the loss of the given data batches look ``factor`` times larger (a synthetic spike)."""

    def __init__(self, batches, factor=3.0):
        self.batches, self.factor = set(batches), factor

    def on_after_backward(self, ctx, metrics):
        if ctx.data_batches in self.batches:
            metrics["loss"] *= self.factor


class RisingLoss(Callback):
    """Reports a loss that climbs by ``rate`` per step from ``start`` on."""

    def __init__(self, start, rate=0.05):
        self.start, self.rate = start, rate

    def on_after_backward(self, ctx, metrics):
        if metrics["step"] >= self.start:
            metrics["loss"] += self.rate * (metrics["step"] - self.start + 1)


class InterruptAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_after_backward(self, ctx, metrics):
        if ctx.step == self.step:
            raise KeyboardInterrupt


def test_one_nan_step_is_skipped_and_training_goes_on(tiny_cfg):
    cfg = tiny_cfg("train.steps=8", "guard.inject_nan_at_steps=[5]")
    summary = train(cfg)
    skips = events(cfg.run_dir, "skip_step")
    assert [(e["step"], e["reason"]) for e in skips] == [(5, "nonfinite")]
    assert not events(cfg.run_dir, "rollback")
    records = {r["step"]: r for r in train_steps(cfg.run_dir)}
    assert records[5]["skipped"] is True and records[5]["guard"] == "nonfinite"
    assert all(math.isfinite(x) for i, x in enumerate(summary["losses"]) if i != 4)


def test_repeated_nan_rolls_back_to_the_last_checkpoint_skips_the_bad_data_and_finishes(tiny_cfg):
    # Batches 5, 6, 7 are poisoned; the checkpoint before them is step 4.
    cfg = tiny_cfg("train.steps=12", "checkpoint.every=4", "guard.inject_nan_at_steps=[5,6,7]",
                   "guard.rollback_after=3", "guard.skip_batches=3",
                   "guard.throughput_action=off")  # a shared CI machine's speed swings are not this test's subject
    summary = train(cfg)
    run = cfg.run_dir
    assert [e["step"] for e in events(run, "skip_step")] == [5, 6, 7]
    (rb,) = events(run, "rollback")
    assert rb["checkpoint"].endswith("step_00000004") and rb["from_step"] == 7 and rb["to_step"] == 4
    # past everything consumed up to the bad step (batches 5-7), then skip_batches more (8-10)
    assert rb["skipped_batches"] == 6 and rb["skipped_data_batches"] == [5, 10] and rb["data_batches"] == 10
    assert summary["steps"] == 12 and len(summary["losses"]) == 12
    assert all(math.isfinite(x) for x in summary["losses"])  # the poisoned batches were never seen again
    # metrics.jsonl holds the surviving branch, once per step; the abandoned steps are kept aside.
    assert [r["step"] for r in train_steps(run)] == list(range(1, 13))
    orphaned = [(r["kind"], r["step"]) for r in iter_jsonl(run / "metrics.orphaned.jsonl")]
    assert orphaned == [("train", 5), ("train", 6), ("val", 6), ("train", 7)]
    alerts = list(iter_jsonl(run / "alerts.jsonl"))
    assert [a["rule"] for a in alerts] == ["rollback"]


class CorruptCheckpointAt(Callback):
    """Damages the newest checkpoint at the end of ``step`` (bit rot noticed only when it is needed)."""

    def __init__(self, step, checkpoint_step):
        self.step, self.checkpoint_step = step, checkpoint_step

    def on_step_end(self, ctx, metrics):
        if ctx.step == self.step and ctx.is_main:
            from pretrainlab.train.integrity import corrupt

            corrupt(ctx.run_dir / "checkpoints" / ckpt.step_dir_name(self.checkpoint_step), "truncate-model")


def test_a_rollback_skips_a_damaged_newest_checkpoint_and_goes_back_to_the_one_before(tiny_cfg):
    cfg = tiny_cfg("train.steps=14", "checkpoint.every=4", "checkpoint.keep_last=5", "guard.inject_nan_at_steps=[9,10,11]",
                   "guard.rollback_after=3", "guard.skip_batches=1", "guard.throughput_action=off")
    summary = train(cfg, callbacks=[CorruptCheckpointAt(11, 8)])
    run = cfg.run_dir
    (rb,) = events(run, "rollback")
    assert rb["checkpoint"].endswith("step_00000004") and rb["to_step"] == 4
    (skipped,) = events(run, "checkpoint_skipped")
    assert skipped["skipped_step"] == 8 and "model.pt" in skipped["reason"]
    assert (run / "checkpoints" / ".corrupt-step_00000008").is_dir()  # set aside, never deleted
    assert summary["steps"] == 14 and all(math.isfinite(x) for x in summary["losses"])


def test_repeated_rollbacks_skip_past_the_bad_region_and_the_skip_grows_each_time(tiny_cfg):
    # Poisoned data 5-10 is wider than skip_batches=1: skipping from the checkpoint would land in it again and again.
    cfg = tiny_cfg("train.steps=12", "checkpoint.every=4", "guard.inject_nan_at_steps=[5,6,7,8,9,10]",
                   "guard.rollback_after=2", "guard.skip_batches=1", "guard.max_rollbacks=3")
    summary = train(cfg)
    run = cfg.run_dir
    first, second = events(run, "rollback")
    assert (first["to_step"], first["skipped_data_batches"]) == (4, [5, 7])  # bad 5, 6 -> past 6, +1
    assert (second["to_step"], second["skipped_data_batches"]) == (4, [5, 11])  # bad 8, 9 -> past 9, +2 (doubled)
    assert [e["data_batch"] for e in events(run, "inject_nan")] == [5, 6, 8, 9]  # no bad batch seen twice
    assert summary["steps"] == 12 and all(math.isfinite(x) for x in summary["losses"])
    assert "past bad batch 9 and 2 more (rollback 2/3)" in list(iter_jsonl(run / "alerts.jsonl"))[-1]["message"]


def test_the_rollback_limit_stops_the_run_with_a_clear_message(tiny_cfg):
    cfg = tiny_cfg("train.steps=12", "guard.inject_nan_at_steps=[3,4]", "guard.rollback_after=2",
                   "guard.max_rollbacks=0")
    with pytest.raises(TrainingStopped, match="rollback.*limit.*guard.max_rollbacks=0"):
        train(cfg)
    assert events(cfg.run_dir, "stopped")
    assert [a["level"] for a in iter_jsonl(cfg.run_dir / "alerts.jsonl")] == ["critical"]


def test_a_loss_spike_is_skipped_and_repeated_spikes_roll_back(tiny_cfg):
    cfg = tiny_cfg("train.steps=16", "checkpoint.every=4", "guard.spike_warmup=5", "guard.spike_window=16",
                   "guard.rollback_after=2", "guard.skip_batches=2")
    summary = train(cfg, callbacks=[ScaleLossOnBatches([10, 12, 13])])
    run = cfg.run_dir
    skips = [(e["step"], e["reason"]) for e in events(run, "skip_step")]
    assert skips == [(10, "spike"), (12, "spike"), (13, "spike")]  # no false alarm on ordinary steps
    first = events(run, "skip_step")[0]
    assert first["loss"] > first["threshold"]
    (rb,) = events(run, "rollback")
    assert rb["from_step"] == 13 and rb["to_step"] == 12 and rb["skipped_batches"] == 3
    assert rb["skipped_data_batches"] == [13, 15]  # the bad batch 13, then skip_batches=2 more
    assert summary["steps"] == 16


def test_resume_restores_the_guard_state(tiny_cfg, tmp_path):
    """The spike window and counters live in the checkpoint, so a resumed run judges steps as the original did."""
    full = train(tiny_cfg(f"run.dir={tmp_path / 'full'}", "guard.spike_warmup=3"),
                 callbacks=[ScaleLossOnBatches([9])])
    cfg = tiny_cfg(f"run.dir={tmp_path / 'split'}", "guard.spike_warmup=3", "checkpoint.every=100")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[InterruptAt(6), ScaleLossOnBatches([9])])
    state = json.loads((ckpt.latest_checkpoint(cfg.run_dir) / "state.json").read_text())
    assert len(state["callbacks"]["Guard"]["losses"]) > 0
    # Only 2 losses after the resume: the spike at step 9 is caught thanks to the restored window.
    resumed = train(tiny_cfg(f"run.dir={tmp_path / 'split'}", "guard.spike_warmup=3"),
                    callbacks=[ScaleLossOnBatches([9])])
    assert resumed["losses"] == full["losses"][6:]
    skipped = lambda run: [e["step"] for e in events(run, "skip_step")]  # noqa: E731
    assert skipped(tmp_path / "full") == skipped(tmp_path / "split") == [9]


def test_a_rising_loss_pauses_the_run_with_a_checkpoint(tiny_cfg):
    cfg = tiny_cfg("train.steps=30", "checkpoint.every=100", "guard.rising_window=10steps")
    with pytest.raises(TrainingPaused) as info:
        train(cfg, callbacks=[RisingLoss(start=4, rate=0.2)])
    (pause,) = events(cfg.run_dir, "pause")
    assert pause["rule"] == "loss_rising"
    step = pause["step"]
    assert 10 <= step < 30
    assert info.value.checkpoint.endswith(f"step_{step:08d}") and ckpt.is_complete(info.value.checkpoint)
    (alert,) = [a for a in iter_jsonl(cfg.run_dir / "alerts.jsonl") if a["rule"] == "loss_rising"]
    assert alert["level"] == "critical" and "paused" in alert["message"]


def run_cli(args, env=None):
    return subprocess.run([sys.executable, "-m", "pretrainlab.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, timeout=300)


@pytest.mark.slow
def test_a_flat_loss_pauses_with_exit_75_and_resume_auto_continues(tiny_data, tmp_path):
    from conftest import tiny_overrides

    run = tmp_path / "flat"
    base = ["train", "--resume", "auto"]
    for o in tiny_overrides(tiny_data) + [f"run.dir={run}", "train.steps=24", "guard.flat_window=8steps"]:
        base += ["--set", o]
    first = run_cli(base + ["--set", "optim.lr=1e-9"])  # the loss cannot move: flat
    assert first.returncode == 75, first.stderr[-2000:]
    assert "paused:" in first.stderr and "loss_flat" in first.stderr and "--resume auto" in first.stderr
    (pause,) = events(run, "pause")
    # The operator raises the learning rate and continues from the pause checkpoint.
    second = run_cli(base + ["--set", "optim.lr=5e-3"])
    assert second.returncode == 0, second.stderr[-2000:]
    (resumed,) = events(run, "resume")
    assert resumed["checkpoint"] == pause["checkpoint"] and resumed["step"] == pause["step"]
    assert [r["step"] for r in train_steps(run)] == list(range(1, 25))
    assert events(run, "end")


class FakeCtx:
    """Just enough of TrainContext to drive the guard's trend rules step by step."""

    def __init__(self):
        from types import SimpleNamespace

        self.cfg = SimpleNamespace(train=SimpleNamespace(log_every=1))
        self.history, self.events, self.pauses = [], [], []

    def event(self, name, **fields):
        self.events.append({"event": name, **fields})

    def request_pause(self, rule, message):
        self.pauses.append(rule)

    def step(self, guard, step, loss, tokens_per_s):
        metrics = {"step": step, "loss": loss, "grad_norm": 1.0, "time": 1000.0 + step}
        guard.on_step_end(self, metrics)
        self.history.append({**metrics, "tokens_per_s": tokens_per_s})


def make_guard(tmp_path, **cfg):
    from pretrainlab.config import AlertsConfig, GuardConfig
    from pretrainlab.monitor.alerts import AlertManager
    from pretrainlab.train.guard import Guard

    return Guard(GuardConfig(**cfg), AlertManager(AlertsConfig(console=False), tmp_path))


def test_a_throughput_drop_alerts_once_and_rearms_after_recovery(tmp_path):
    guard = make_guard(tmp_path, throughput_window="20steps", throughput_fraction=0.5)
    ctx = FakeCtx()
    speeds = [1000.0] * 30 + [300.0] * 10 + [1000.0] * 30 + [200.0] * 10
    for i, tps in enumerate(speeds, start=1):
        ctx.step(guard, i, 5.0 - 0.01 * i, tps)
    drops = [e for e in ctx.events if e.get("rule") == "throughput_drop"]
    assert [e["step"] for e in drops] == [33, 73]  # the median of the last 3 points falls below 50% two steps in
    assert all(e["action"] == "alert" for e in drops) and not ctx.pauses
    assert any(e.get("rule") == "throughput_recovered" for e in ctx.events)
    alerts = list(iter_jsonl(tmp_path / "alerts.jsonl"))
    assert [a["rule"] for a in alerts] == ["throughput_drop", "throughput_drop"]


def test_a_throughput_drop_is_caught_before_a_whole_window_of_history_exists(tmp_path):
    guard = make_guard(tmp_path)  # throughput_window: 1h
    ctx = FakeCtx()
    speeds = [1000.0] * 20 + [110.0] * 10  # one logged step a minute: 20 minutes normal, then 10 at 11%
    for i, tps in enumerate(speeds, start=1):
        metrics = {"step": i, "loss": 5.0 - 0.01 * i, "grad_norm": 1.0, "time": 60.0 * i}
        guard.on_step_end(ctx, metrics)
        ctx.history.append({**metrics, "tokens_per_s": tps})
    drops = [e for e in ctx.events if e.get("rule") == "throughput_drop"]
    assert [e["step"] for e in drops] == [23]  # two low points in, well before an hour has passed
    assert drops[0]["median"] == 1000.0


def test_trend_rules_over_wall_clock_hours(tmp_path):
    guard = make_guard(tmp_path, flat_window="2h", flat_action="alert", rising_action="off")
    ctx = FakeCtx()
    for i in range(1, 200):  # one step a minute, loss flat at 3.0 +- noise
        metrics = {"step": i, "loss": 3.0 + 0.001 * ((i * 7919) % 13 - 6), "grad_norm": 1.0, "time": 60.0 * i}
        guard.on_step_end(ctx, metrics)
    flats = [e for e in ctx.events if e.get("rule") == "loss_flat"]
    assert [e["step"] for e in flats] == [121]  # first full 2-hour window; alert-only re-arms after another 2h
    assert not ctx.pauses


def test_the_trend_statistics():
    from pretrainlab.monitor.trend import linear_trend, t_sf

    assert 2 * t_sf(2.228, 10) == pytest.approx(0.05, abs=1e-3)  # textbook two-sided 5% critical value
    assert 2 * t_sf(12.706, 1) == pytest.approx(0.05, abs=1e-3)
    tr = linear_trend(list(range(20)), [10 - 0.5 * x + (0.1 if x % 2 else -0.1) for x in range(20)])
    assert tr.slope == pytest.approx(-0.5, abs=0.01) and tr.p_decrease < 1e-6 and tr.p_increase > 0.99
    assert linear_trend([1, 1, 1], [1, 2, 3]) is None
