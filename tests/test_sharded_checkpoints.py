"""Sharded (torch.distributed.checkpoint) checkpoints in one process: same guarantees as full-state ones."""

import errno
import shutil

import pytest
import torch

from pretrainlab.errors import UserError
from pretrainlab.fsio import iter_jsonl
from pretrainlab.train import checkpoint as ckpt
from pretrainlab.train.trainer import train


def test_sharded_saves_resume_exactly_and_match_full_ones(tiny_cfg, tmp_path):
    full = train(tiny_cfg("train.steps=8", f"run.dir={tmp_path / 'full'}", "checkpoint.format=full"))
    for async_save in ("false", "true"):
        cfg = tiny_cfg("train.steps=8", f"run.dir={tmp_path / f'sharded-{async_save}'}", "checkpoint.format=sharded",
                       f"checkpoint.async_save={async_save}")
        run = train(cfg)
        assert run["losses"] == full["losses"]
        latest = ckpt.latest_checkpoint(cfg.run_dir)
        assert ckpt.checkpoint_format(latest) == "sharded"
        assert not (latest / "model.pt").exists() and list(latest.glob("*.distcp"))
        shutil.rmtree(latest)  # as if killed before step 8's checkpoint: resume from step 4
        assert train(cfg)["losses"] == full["losses"][4:]


def test_a_sharded_checkpoint_loads_as_a_full_model_for_export_and_eval(tiny_cfg, tmp_path):
    sharded = tiny_cfg("train.steps=4", f"run.dir={tmp_path / 'sharded'}", "checkpoint.format=sharded")
    full = tiny_cfg("train.steps=4", f"run.dir={tmp_path / 'full'}", "checkpoint.format=full")
    train(sharded)
    train(full)
    a, _, path = ckpt.load_model(sharded.run_dir)
    b, _, _ = ckpt.load_model(full.run_dir)
    assert ckpt.checkpoint_format(path) == "sharded"
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_a_failed_sharded_save_keeps_the_previous_checkpoint_and_says_so(tiny_cfg, monkeypatch):
    from torch.distributed.checkpoint.filesystem import FileSystem

    cfg = tiny_cfg("train.steps=8", "checkpoint.format=sharded", "checkpoint.keep_best=false")
    real = FileSystem.create_stream
    opened = []

    def full_disk(self, path, mode):
        opened.append(path)
        if "step_00000008" in str(path):  # step 4's checkpoint is written, then the disk is "full"
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, mode)

    monkeypatch.setattr(FileSystem, "create_stream", full_disk)
    with pytest.raises(UserError, match=r"step 8 failed \(disk full\); the previous checkpoint .*step_00000004 is intact"):
        train(cfg)
    assert ckpt.latest_checkpoint(cfg.run_dir).name == "step_00000004"
    assert not [p for p in (cfg.run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(FileSystem, "create_stream", real)
    ckpt.load_model(cfg.run_dir)  # still loadable
    assert train(cfg)["steps"] == 8  # and the run continues from it


def test_milestones_and_best_copy_sharded_checkpoints_whole(tiny_cfg):
    cfg = tiny_cfg("train.steps=8", "checkpoint.every=2", "checkpoint.keep_last=1", "train.val_every=2",
                   "checkpoint.milestone_every_tokens=1024", "checkpoint.format=sharded", "checkpoint.async_save=true")
    train(cfg)
    root = cfg.run_dir / "checkpoints"
    assert sorted(p.name for p in (root / "milestones").iterdir()) == ["tokens_1.024K", "tokens_2.048K"]
    assert [s for s, _ in ckpt.list_checkpoints(cfg.run_dir)] == [8]
    for d in (root / "milestones" / "tokens_1.024K", root / "best"):
        assert ckpt.is_complete(d) and ckpt.checkpoint_format(d) == "sharded"
        ckpt.load_model(cfg.run_dir, str(d))


def test_auto_format_is_sharded_under_torchrun_also_with_expert_parallel():
    # expert-parallel slices are saved as DTensor chunks of the full tensors (tests/test_moe_ep_train.py)
    assert ckpt.resolve_format("auto", 2, expert_parallel=2) == "sharded"
    assert ckpt.resolve_format("sharded", 2, expert_parallel=2) == "sharded"
    assert ckpt.resolve_format("auto", 2) == "sharded" and ckpt.resolve_format("auto", 1) == "full"


def test_a_guard_rollback_reloads_a_sharded_checkpoint_like_a_full_one(tiny_cfg, tmp_path):
    guard = ("train.steps=10", "checkpoint.every=4", "guard.inject_nan_at_steps=[5,6,7]", "guard.rollback_after=3",
             "guard.skip_batches=3")
    runs = {fmt: train(tiny_cfg(*guard, f"run.dir={tmp_path / fmt}", f"checkpoint.format={fmt}"))
            for fmt in ("full", "sharded")}
    finite = {fmt: [x for x in r["losses"] if x == x] for fmt, r in runs.items()}
    assert finite["sharded"] == finite["full"] and len(finite["full"]) >= 8
    for fmt in runs:
        (rollback,) = [e for e in iter_jsonl(tmp_path / fmt / "events.jsonl") if e["event"] == "rollback"]
        assert rollback["to_step"] == 4
        assert {ckpt.checkpoint_format(p) for _, p in ckpt.list_checkpoints(tmp_path / fmt)} == {fmt}
