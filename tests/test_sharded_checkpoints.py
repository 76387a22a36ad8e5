"""Sharded (torch.distributed.checkpoint) checkpoints in one process: same guarantees as full-state ones."""

import errno
import json
import re
import shutil
from concurrent.futures import Future

import pytest
import torch

from pretrainlab.errors import UserError
from pretrainlab.fsio import iter_jsonl
from pretrainlab.train import checkpoint as ckpt
from pretrainlab.train import integrity, recovery
from pretrainlab.recipes import train


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
    with pytest.raises(UserError, match=r"step 8 to .*checkpoints failed \(disk full: needs about .*\); "
                                        r"the previous checkpoint .*step_00000004 is intact"):
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


# --------------------------------------------------------------------------- integrity, recovery, failures


def _app_state(n: int = 64) -> dict:
    model = torch.nn.Linear(n, n)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, n)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optim": opt.state_dict()}


def _save(run_dir, step, n: int = 64):
    return ckpt.save_sharded_checkpoint(run_dir, step, _app_state(n), {"torch": torch.get_rng_state()}, {"step": step})


def test_a_sharded_checkpoint_records_its_shards_and_metadata(tmp_path):
    path = _save(tmp_path, 1)
    files = json.loads((path / ckpt.MARKER).read_text())["files"]
    assert {".metadata", "rng.pt", "state.json", "meta.json"} <= set(files)
    shards = sorted(p.name for p in path.glob("*.distcp"))
    assert shards and set(shards) <= set(files)
    assert all(files[n] == integrity.file_entry(path / n) for n in files)
    assert ckpt.verify(path) is None


@pytest.mark.parametrize("kind,says", [("truncate-distcp", r"__0_0\.distcp is [\d,]+ bytes, [\d,]+ when saved"),
                                       ("truncate-metadata", r"\.metadata is [\d,]+ bytes"),
                                       ("flip-byte", r"__0_0\.distcp does not match the checksum")])
def test_a_damaged_sharded_checkpoint_is_set_aside_for_the_previous_one(tmp_path, kind, says):
    _save(tmp_path, 1)
    integrity.corrupt(_save(tmp_path, 2), kind)
    found = recovery.find_resumable(tmp_path)
    assert found.step == 1 and re.search(says, found.skipped[0].reason), found.skipped[0].reason
    assert found.skipped[0].moved_to.name == ".corrupt-step_00000002"


def test_resume_auto_skips_a_truncated_shard_and_continues_bit_identically(tiny_cfg, tmp_path):
    sharded = ("checkpoint.format=sharded", "checkpoint.keep_best=false")
    whole = train(tiny_cfg(f"run.dir={tmp_path / 'whole'}", *sharded))
    cfg = tiny_cfg(f"run.dir={tmp_path / 'cut'}", "train.steps=8", *sharded)
    train(cfg)
    integrity.corrupt(ckpt.latest_checkpoint(cfg.run_dir), "truncate-metadata")
    assert train(tiny_cfg(f"run.dir={tmp_path / 'cut'}", *sharded))["losses"] == whole["losses"][4:]
    (event,) = [e for e in iter_jsonl(cfg.run_dir / "events.jsonl") if e["event"] == "checkpoint_skipped"]
    assert event["skipped_step"] == 8 and ".metadata" in event["reason"]


def test_a_failed_staging_copy_is_raised_not_swallowed():
    saver = ckpt.ShardedAsyncCheckpointer()
    try:
        failed: Future = Future()
        failed.set_exception(RuntimeError("CUDA error: out of memory"))
        saver._staging = failed
        with pytest.raises(RuntimeError, match="copying checkpoint state to CPU failed: CUDA error: out of memory"):
            saver.wait_staged()
    finally:
        saver.close()


@pytest.mark.parametrize("left_kb", [500, 200, 8])  # room left for the second save: it fails at a different point
def test_a_real_full_disk_fails_a_sharded_save_in_one_line(small_disk, left_kb):
    run = small_disk / "run"
    _save(run, 1, n=256)
    (small_disk / "filler").write_bytes(b"\0" * max(0, shutil.disk_usage(small_disk).free - left_kb * 1024))
    with pytest.raises(UserError, match=rf"step 2 to {re.escape(str(run / 'checkpoints'))} failed \(disk full: needs"):
        _save(run, 2, n=256)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000001"]
    assert ckpt.verify(run / "checkpoints" / "step_00000001") is None


@pytest.mark.slow
def test_under_torchrun_the_ranks_agree_to_skip_a_shard_only_one_of_them_checked(tiny_data, tmp_path):
    from test_distributed import keep_up_to, run_two

    whole = run_two(tiny_data, tmp_path / "whole", "train.parallel=fsdp2")  # 10 steps, a checkpoint every 2
    run = keep_up_to(tmp_path / "whole", tmp_path / "run", 6)
    hit = integrity.corrupt(run / "checkpoints" / "step_00000006", "flip-byte")
    assert hit.suffix == ".distcp"  # same size: only the checksum, read by one of the two ranks, sees it
    assert run_two(tiny_data, run, "train.parallel=fsdp2") == whole
    (event,) = [e for e in iter_jsonl(run / "events.jsonl") if e["event"] == "checkpoint_skipped"]
    assert event["skipped_step"] == 6 and "does not match the checksum" in event["reason"]
    assert [e["checkpoint"] for e in iter_jsonl(run / "events.jsonl") if e["event"] == "resume"][-1].endswith("step_00000004")
