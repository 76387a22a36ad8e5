"""Checkpoint policies: async saves, failed saves, milestones by tokens, best by validation."""

import json

import pytest

from pretrainlab.errors import UserError
from pretrainlab.fsio import iter_jsonl
from pretrainlab.train import checkpoint as ckpt
from pretrainlab.train.trainer import train


def test_async_saves_give_the_same_checkpoints_and_exact_resume(tiny_cfg, tmp_path):
    sync = train(tiny_cfg("train.steps=8", f"run.dir={tmp_path / 'sync'}"))
    cfg = tiny_cfg("train.steps=8", f"run.dir={tmp_path / 'async'}", "checkpoint.async_save=true")
    asyn = train(cfg)
    assert asyn["losses"] == sync["losses"]
    assert [s for s, _ in ckpt.list_checkpoints(cfg.run_dir)] == [4, 8]
    # drop the final checkpoint and resume from step 4: identical continuation
    import shutil

    shutil.rmtree(ckpt.latest_checkpoint(cfg.run_dir))
    resumed = train(cfg)
    assert resumed["losses"] == sync["losses"][4:]


def test_a_failed_save_keeps_the_previous_checkpoint_and_says_so(tiny_cfg, monkeypatch):
    cfg = tiny_cfg("train.steps=8", "checkpoint.every=4")
    calls = {"n": 0}
    real = ckpt._torch_save

    def flaky(obj, path):
        calls["n"] += 1
        if calls["n"] > 6:  # the first two checkpoints (3 files each) succeed, then the disk is "full"
            import errno

            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, path)

    monkeypatch.setattr(ckpt, "_torch_save", flaky)
    with pytest.raises(UserError, match=r"failed \(disk full\); the previous checkpoint .*step_00000004 is intact"):
        train(cfg)
    assert ckpt.latest_checkpoint(cfg.run_dir).name == "step_00000004"
    assert not [p for p in (cfg.run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    ckpt.load_checkpoint(ckpt.latest_checkpoint(cfg.run_dir))  # still loadable


def test_milestones_are_named_by_tokens_and_never_pruned(tiny_cfg):
    cfg = tiny_cfg("train.steps=12", "checkpoint.every=2", "checkpoint.keep_last=1",
                   "checkpoint.milestone_every_tokens=1024")  # 256 tokens/step: every 4 steps
    train(cfg)
    names = sorted(p.name for p in (cfg.run_dir / "checkpoints" / "milestones").iterdir())
    assert names == ["tokens_1.024K", "tokens_2.048K", "tokens_3.072K"]
    assert all(ckpt.is_complete(cfg.run_dir / "checkpoints" / "milestones" / n) for n in names)
    assert len(ckpt.list_checkpoints(cfg.run_dir)) == 1


def test_best_points_at_the_lowest_validation_loss(tiny_cfg):
    cfg = tiny_cfg("train.steps=12", "train.val_every=4", "checkpoint.every=4", "optim.lr=5e-3")
    train(cfg)
    vals = {r["step"]: r["val_loss"] for r in iter_jsonl(cfg.run_dir / "metrics.jsonl")
            if r["kind"] == "val" and r["step"] > 0}
    best = json.loads((cfg.run_dir / "checkpoints" / "best" / "best.json").read_text())
    assert best["val_loss"] == min(vals.values())
    assert best["source"] == f"step_{min(vals, key=vals.get):08d}"


def test_token_counts_format_for_milestone_names():
    assert ckpt.format_tokens(1_500_000_000) == "1.5B"
    assert ckpt.format_tokens(2_000_000) == "2M"
