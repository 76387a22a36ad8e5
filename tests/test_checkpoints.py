"""Checkpoint policies: async saves, failed saves, milestones by tokens, best by validation; integrity and recovery."""

import errno
import json
import os
import re
import shutil

import pytest
import torch

from pretrainlab.errors import UserError
from pretrainlab.fsio import iter_jsonl
from pretrainlab.train import checkpoint as ckpt
from pretrainlab.train import integrity, recovery
from pretrainlab.recipes import train


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
        return real(obj, path)

    monkeypatch.setattr(ckpt, "_torch_save", flaky)
    with pytest.raises(UserError, match=r"step 8 to .*checkpoints failed \(disk full: needs about .*\); "
                                        r"the previous checkpoint .*step_00000004 is intact"):
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


# --------------------------------------------------------------------------- integrity: sizes and checksums


def _state(n: int = 64):
    model = torch.nn.Linear(n, n)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, n)).sum().backward()
    opt.step()
    return model.state_dict(), opt.state_dict()


def _save(run_dir, step, n: int = 64):
    model, optim = _state(n)
    return ckpt.save_checkpoint(run_dir, step, model, optim, {"torch": torch.get_rng_state()}, {"step": step})


def test_the_marker_records_every_files_size_and_checksum(tmp_path):
    path = _save(tmp_path, 1)
    marker = json.loads((path / ckpt.MARKER).read_text())
    assert sorted(marker["files"]) == ["meta.json", "model.pt", "optim.pt", "rng.pt", "state.json"]
    for name, rec in marker["files"].items():
        assert rec == integrity.file_entry(path / name), name
    assert ckpt.verify(path) is None


DAMAGE = {  # corruption -> what the skip says
    "truncate-model": r"model\.pt is [\d,]+ bytes, [\d,]+ when saved",
    "empty-optim": r"optim\.pt is 0 bytes",
    "half-state": r"state\.json is [\d,]+ bytes",
    "flip-byte": r"optim\.pt does not match the checksum",
    "no-marker": r"no completion marker",
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_used(tmp_path, kind):
    _save(tmp_path, 1)
    bad = _save(tmp_path, 2)
    files_before = sorted(p.name for p in bad.iterdir())
    integrity.corrupt(bad, kind)
    found = recovery.find_resumable(tmp_path)
    assert found.path.name == "step_00000001" and found.step == 1
    (skip,) = found.skipped
    assert skip.step == 2 and re.search(DAMAGE[kind], skip.reason), skip.reason
    # renamed aside, never deleted: nothing lists, prunes or overwrites it
    assert not bad.exists() and skip.moved_to.name == f".{'incomplete' if kind == 'no-marker' else 'corrupt'}-step_00000002"
    assert sorted(p.name for p in skip.moved_to.iterdir()) == [n for n in files_before if kind != "no-marker" or n != "COMPLETE"]
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1]
    assert re.match(rf"resumed from step 1; step 2 skipped: {DAMAGE[kind]}", found.summary()), found.summary()
    ckpt.prune_checkpoints(tmp_path, keep_last=1)
    assert skip.moved_to.is_dir()  # prune leaves it alone


def test_the_marker_less_fallback_says_which_step_was_skipped_and_why(tmp_path):
    _save(tmp_path, 14)
    (ckpt.checkpoint_root(tmp_path) / "step_00000021").mkdir()  # e.g. a copy that lost its marker
    found = recovery.find_resumable(tmp_path)
    assert found.summary().startswith("resumed from step 14; step 21 skipped: no completion marker")


def test_resume_auto_stops_with_one_line_when_every_checkpoint_is_damaged(tmp_path):
    integrity.corrupt(_save(tmp_path, 1), "truncate-model")
    with pytest.raises(UserError, match=r"no intact checkpoint to resume from \(step 1 skipped: model\.pt is"):
        recovery.resume_auto(tmp_path)


def test_resume_auto_skips_a_damaged_checkpoint_and_continues_bit_identically(tiny_cfg, tmp_path, capsys):
    whole = train(tiny_cfg(f"run.dir={tmp_path / 'whole'}"))  # 12 steps, checkpoints at 4, 8, 12
    cfg = tiny_cfg(f"run.dir={tmp_path / 'cut'}", "train.steps=8")
    train(cfg)
    integrity.corrupt(ckpt.latest_checkpoint(cfg.run_dir), "truncate-model")
    capsys.readouterr()
    resumed = train(tiny_cfg(f"run.dir={tmp_path / 'cut'}"))
    assert resumed["losses"] == whole["losses"][4:]
    err = capsys.readouterr().err
    assert re.search(r"resumed from step 4; step 8 skipped: model\.pt is [\d,]+ bytes", " ".join(err.split())), err
    (event,) = [e for e in iter_jsonl(cfg.run_dir / "events.jsonl") if e["event"] == "checkpoint_skipped"]
    assert event["skipped_step"] == 8 and "model.pt" in event["reason"] and event["moved_to"].endswith(".corrupt-step_00000008")


def test_prune_never_deletes_the_only_intact_checkpoint(tmp_path):
    _save(tmp_path, 1)
    integrity.corrupt(_save(tmp_path, 2), "truncate-model")
    assert ckpt.prune_checkpoints(tmp_path, keep_last=1) == []
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1, 2]
    _save(tmp_path, 3)
    assert [p.name for p in ckpt.prune_checkpoints(tmp_path, keep_last=1)] == ["step_00000001"]
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 3]  # the damaged one is left for resume to report


def test_reading_a_damaged_checkpoint_is_one_line_naming_the_file(tmp_path):
    path = _save(tmp_path, 1)
    (path / ckpt.MARKER).write_text('{"step": 1}')  # as written before sizes were recorded
    assert ckpt.verify(path) is None
    os.truncate(path / "model.pt", 100)
    with pytest.raises(UserError, match=r"checkpoint file .*step_00000001/model\.pt cannot be read"):
        ckpt.load_checkpoint(path)
    (path / "state.json").write_text('{"step": ')
    assert ckpt.verify(path) == "state.json is not valid JSON (truncated or corrupted)"


def test_eval_and_export_use_the_newest_intact_checkpoint(tmp_path):
    _save(tmp_path, 1)
    bad = _save(tmp_path, 2)
    integrity.corrupt(bad, "flip-byte")
    assert ckpt.resolve_checkpoint(tmp_path).name == "step_00000001"
    assert bad.is_dir()  # a reader does not move anything
    with pytest.raises(UserError, match=r"step_00000002 is damaged: optim\.pt does not match"):
        ckpt.resolve_checkpoint(tmp_path, 2)


# --------------------------------------------------------------------------- disk full


class _Disk:
    """Fault injection: every checkpoint write goes through a disk with ``free`` bytes left."""

    def __init__(self, monkeypatch, free: int):
        self.free = free
        real = integrity.ChecksumWriter.write

        def write(writer, data):
            n = len(memoryview(data).cast("B"))
            if n > self.free:
                writer.error = OSError(errno.ENOSPC, "No space left on device")
                raise writer.error
            self.free -= n
            return real(writer, data)

        monkeypatch.setattr(integrity.ChecksumWriter, "write", write)


@pytest.mark.parametrize("free", [0, 3_000, 20_000, 40_000])  # model.pt ~17 KB, optim.pt ~34 KB
def test_disk_full_at_any_point_of_a_save_is_one_line_and_leaves_no_partial_folder(tmp_path, monkeypatch, free):
    _save(tmp_path, 1)
    _Disk(monkeypatch, free)
    with pytest.raises(UserError) as err:  # torch's zip writer raises RuntimeError("unexpected pos"): not a traceback
        _save(tmp_path, 2)
    root = ckpt.checkpoint_root(tmp_path)
    assert re.fullmatch(rf"saving checkpoint step 2 to {re.escape(str(root))} failed \(disk full: needs about "
                        r"\d+\.\d KB, [\d.]+ \w+ free\); the previous checkpoint .*step_00000001 is intact; .*",
                        str(err.value)), err.value
    assert [p.name for p in root.iterdir()] == ["step_00000001"]
    assert ckpt.verify(root / "step_00000001") is None


def test_disk_full_while_writing_the_trainer_state_is_one_line_too(tmp_path, monkeypatch):
    _save(tmp_path, 1)
    real = ckpt.atomic_write_json

    def full(path, obj):
        if path.name == "state.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, obj)

    monkeypatch.setattr(ckpt, "atomic_write_json", full)
    with pytest.raises(UserError, match=r"failed \(disk full: needs about"):
        _save(tmp_path, 2)
    assert [p.name for p in ckpt.checkpoint_root(tmp_path).iterdir()] == ["step_00000001"]


def test_leftovers_of_a_killed_save_are_removed_by_the_next_one(tmp_path):
    _save(tmp_path, 1)
    root = ckpt.checkpoint_root(tmp_path)
    for name in (".step_00000002.tmp-4242", ".step_00000002.tmp-sharded", ".step_00000001.old-17", ".best.tmp-99"):
        (root / name).mkdir()
        (root / name / "model.pt").write_bytes(b"x" * 100)
    (root / ".corrupt-step_00000003").mkdir()
    _save(tmp_path, 2)
    assert sorted(p.name for p in root.iterdir()) == [".corrupt-step_00000003", "step_00000001", "step_00000002"]


@pytest.mark.parametrize("left_kb", [500, 200, 8])  # room left for the second save: it fails at a different point
def test_a_real_full_disk_fails_the_save_in_one_line_and_keeps_the_previous_checkpoint(small_disk, left_kb):
    run = small_disk / "run"
    _save(run, 1, n=256)  # ~260 KB model + ~520 KB optimizer

    (small_disk / "filler").write_bytes(b"\0" * max(0, shutil.disk_usage(small_disk).free - left_kb * 1024))
    with pytest.raises(UserError, match=rf"step 2 to {re.escape(str(run / 'checkpoints'))} failed \(disk full: needs"):
        _save(run, 2, n=256)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000001"]
    assert ckpt.verify(run / "checkpoints" / "step_00000001") is None
    # the next write to the run (e.g. a resume's meta.json) names the file it could not write
    from pretrainlab.fsio import atomic_write_json

    with pytest.raises(OSError) as err:
        atomic_write_json(run / "meta.json", {"x": "y" * (1 << 20)})
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(run / "meta.json")
