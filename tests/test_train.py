"""Training: loss falls, resume is exact, checkpoints are atomic, runs are traceable."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pretrainlab.errors import UserError
from pretrainlab.fsio import iter_jsonl
from pretrainlab.train import checkpoint as ckpt
from pretrainlab.train.callbacks import Callback
from pretrainlab.recipes import train


def test_training_lowers_validation_loss_and_writes_the_run_directory(tiny_cfg):
    cfg = tiny_cfg("train.steps=30", "train.val_every=15", "optim.lr=5e-3")
    summary = train(cfg)
    run = cfg.run_dir
    assert summary["final_val_loss"] < summary["first_val_loss"] - 0.5
    for name in ("config.yaml", "meta.json", "metrics.jsonl", "events.jsonl"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "meta.json").read_text())
    assert meta["tokenizer_sha256"] and meta["torch"] and "git_sha" in meta
    train_lines = [r for r in iter_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in train_lines] == list(range(1, 31))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= set(train_lines[-1])
    val_lines = [r for r in iter_jsonl(run / "metrics.jsonl") if r["kind"] == "val"]
    assert [r["step"] for r in val_lines] == [0, 15, 30]
    assert "val_loss/prose" in val_lines[-1] and "val_loss/code" in val_lines[-1]


class _InterruptAt(Callback):
    """Simulates Ctrl-C in the middle of the step after ``step`` (the trainer saves, then re-raises)."""

    def __init__(self, step):
        self.step = step

    def on_after_backward(self, ctx, metrics):
        if ctx.step == self.step:
            raise KeyboardInterrupt


def test_resume_reproduces_the_uninterrupted_losses_exactly(tiny_cfg, tmp_path):
    full = train(tiny_cfg("train.steps=12", f"run.dir={tmp_path / 'full'}"))
    split_cfg = tiny_cfg("train.steps=12", f"run.dir={tmp_path / 'split'}", "checkpoint.every=100")
    with pytest.raises(KeyboardInterrupt):
        train(split_cfg, callbacks=[_InterruptAt(6)])
    assert ckpt.latest_checkpoint(split_cfg.run_dir).name == "step_00000006"
    resumed = train(split_cfg, resume="auto")
    assert resumed["losses"] == full["losses"][6:]
    losses = [r["loss"] for r in iter_jsonl(split_cfg.run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert losses == full["losses"]


def test_resume_after_a_crash_discards_metrics_past_the_checkpoint(tiny_cfg):
    cfg = tiny_cfg("train.steps=8", "checkpoint.every=4")
    train(cfg)
    # Simulate a crash after step 8 was logged but before its checkpoint was complete.
    (ckpt.latest_checkpoint(cfg.run_dir) / ckpt.MARKER).unlink()
    train(cfg)
    steps = [r["step"] for r in iter_jsonl(cfg.run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == list(range(1, 9))
    assert (cfg.run_dir / "metrics.orphaned.jsonl").is_file()


def test_keep_last_prunes_old_checkpoints_and_every_survivor_is_complete(tiny_cfg):
    cfg = tiny_cfg("train.steps=12", "checkpoint.every=2", "checkpoint.keep_last=2")
    train(cfg)
    steps = [s for s, _ in ckpt.list_checkpoints(cfg.run_dir)]
    assert steps == [10, 12]
    assert all(ckpt.is_complete(p) for _, p in ckpt.list_checkpoints(cfg.run_dir))


def test_a_checkpoint_without_its_marker_is_never_resumed_from(tiny_cfg):
    cfg = tiny_cfg("train.steps=8", "checkpoint.every=4")
    train(cfg)
    newest = ckpt.latest_checkpoint(cfg.run_dir)
    (newest / ckpt.MARKER).unlink()  # as if killed before the marker was written
    assert ckpt.latest_checkpoint(cfg.run_dir).name == "step_00000004"


def test_resume_never_refuses_to_overwrite_an_existing_run(tiny_cfg):
    cfg = tiny_cfg("train.steps=4")
    train(cfg)
    with pytest.raises(UserError, match="already holds a run"):
        train(cfg, resume="never")


def test_changing_the_model_of_an_existing_run_is_refused(tiny_cfg):
    train(tiny_cfg("train.steps=4"))
    with pytest.raises(UserError, match="'model' config differs"):
        train(tiny_cfg("train.steps=8", "model.n_layers=3"))


@pytest.mark.slow
def test_kill_9_mid_run_loses_only_steps_since_the_last_checkpoint(tiny_data, tmp_path):
    from conftest import tiny_overrides

    run_dir = tmp_path / "killed"
    args = [sys.executable, "-m", "pretrainlab.cli", "train", "--resume", "auto"]
    for o in tiny_overrides(tiny_data) + [f"run.dir={run_dir}", "train.steps=300", "checkpoint.every=3", "train.val_every=100"]:
        args += ["--set", o]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and len(ckpt.list_checkpoints(run_dir)) < 2:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = ckpt.latest_checkpoint(run_dir)
    assert saved is not None and ckpt.is_complete(saved)
    # Every checkpoint directory that exists is complete; temporaries are hidden.
    for child in (run_dir / "checkpoints").iterdir():
        assert child.name.startswith(".") or ckpt.is_complete(child)
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from" in out.stdout + out.stderr
