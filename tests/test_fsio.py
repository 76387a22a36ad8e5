"""Durable files: JSONL logs tolerate only a torn last line; writes name their path; killed writers' leftovers go."""

from __future__ import annotations

import errno
import json
import os

import pytest

from pretrainlab import fsio
from pretrainlab.errors import DataError


def _write(path, text: str):
    path.write_bytes(text.encode("utf-8"))
    return path


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path):
    path = _write(tmp_path / "m.jsonl", '{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    with pytest.warns(UserWarning, match=r"m\.jsonl:3: torn last line skipped"):
        assert [r["step"] for r in fsio.iter_jsonl(path)] == [1, 2]


@pytest.mark.parametrize("bad", ['{"step": 2, "lo', "garbage", "[1, 2]", '{"step": 2}{"step": 3}', "\udcff"])
def test_a_malformed_line_before_the_last_is_an_error_naming_file_and_line(tmp_path, bad):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"step": 1}\n\n' + bad.encode("utf-8", "surrogateescape") + b'\n{"step": 3}\n')
    with pytest.raises(DataError, match=rf"{path}:3: malformed line \("):
        list(fsio.iter_jsonl(path))


def test_blank_lines_and_a_final_newline_are_fine(tmp_path):
    path = _write(tmp_path / "m.jsonl", '\n{"a": 1}\n\n{"a": 2}\n\n')
    assert list(fsio.iter_jsonl(path)) == [{"a": 1}, {"a": 2}]


def test_appending_after_a_crash_cuts_the_torn_line_first(tmp_path):
    path = _write(tmp_path / "e.jsonl", '{"step": 1}\n{"step": 2, "ev')
    fsio.append_jsonl(path, {"step": 3})
    assert path.read_text() == '{"step": 1}\n{"step": 3}\n'
    assert [r["step"] for r in fsio.iter_jsonl(path)] == [1, 3]
    only_torn = _write(tmp_path / "t.jsonl", '{"ste')
    fsio.append_jsonl(only_torn, {"a": 1})
    assert only_torn.read_text() == '{"a": 1}\n'


def test_a_corrupted_metrics_file_is_not_a_go(tmp_path, capsys):
    from test_gates import BASIC, make_run, write_gates

    from pretrainlab.cli import main

    run = make_run(tmp_path, nan_at=100)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines) if '"step": 100,' in line)
    lines[i] = lines[i][:25] + "\n"  # the NaN record, damaged: skipping it would hide the NaN
    (run / "metrics.jsonl").write_text("".join(lines))
    gates = write_gates(tmp_path, BASIC)
    assert main(["gates", "check", str(run), "--gates", str(gates)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {run / 'metrics.jsonl'}:{i + 1}: malformed line") and "\n" not in err


def test_a_failed_write_names_its_file_and_the_free_space(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")  # as write()/fsync() report it: no file name

    monkeypatch.setattr(fsio.os, "fsync", full)
    with pytest.raises(OSError) as err:
        fsio.atomic_write_json(tmp_path / "meta.json", {"a": 1})
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "meta.json")
    assert "bytes free" in err.value.strerror
    assert [p.name for p in tmp_path.iterdir()] == []  # its temporary file is gone too


def test_the_cli_prints_a_full_disk_as_one_line_with_the_path(tmp_path, monkeypatch, capsys):
    import argparse

    from pretrainlab import cli

    class FullDisk:  # a file whose writes fail as a full disk's do
        def __init__(self, path, mode, **kw):
            self.fh = open(path, mode, **kw)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def handler(args):
        fsio.append_jsonl(tmp_path / "events.jsonl", {"event": "resume"})

    parser = argparse.ArgumentParser()
    parser.set_defaults(handler=handler)
    monkeypatch.setattr(fsio, "open", FullDisk, raising=False)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert "No space left on device" in err and str(tmp_path / "events.jsonl") in err and "\n" not in err


# --------------------------------------------------------------------------- leftovers of killed writers


def test_only_a_killed_writers_temporaries_of_the_target_are_removed(tmp_path):
    out = tmp_path / "clean"
    out.mkdir()
    for name in (".clean.tmp-k2j4x9a_", ".clean.old-4242"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.jsonl").write_text("{}\n")
    (tmp_path / ".clean.ab12cd34.tmp").write_text("x")
    keep = [".cleaner.tmp-x", "clean.tmp-x", ".clean", ".other.tmp-1", "notes.tmp"]
    for name in keep:
        (tmp_path / name).mkdir()
    removed = fsio.remove_stale_temporaries(out)
    assert sorted(p.name for p in removed) == [".clean.ab12cd34.tmp", ".clean.old-4242", ".clean.tmp-k2j4x9a_"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, "clean"])


def test_atomic_open_temporaries_are_removed_one_level_deep(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "deeper").mkdir()
    left = [tmp_path / ".manifest.json.a1b2c3d4.tmp", tmp_path / "src" / ".train.bin.zz_9y8x7.tmp"]
    keep = [tmp_path / "src" / "train.bin", tmp_path / "src" / "x.tmp", tmp_path / "src" / ".train.bin.tmp",
            tmp_path / "src" / "deeper" / ".a.b1b2b3b4.tmp"]
    for p in left + keep:
        p.write_text("x")
    assert sorted(fsio.remove_temporary_files(tmp_path)) == sorted(left)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in left)


def test_a_rerun_of_data_tokenize_removes_what_a_killed_one_left(tiny_data, tmp_path):
    from pretrainlab.config import load_config
    from pretrainlab.tokenizer.shards import tokenize_corpus

    from conftest import tiny_overrides

    out = tmp_path / "tokens"
    cfg = load_config(None, tiny_overrides(tiny_data) + [f"tokenize.out={out}", "tokenize.workers=1"])
    tokenize_corpus(cfg)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # what kill -9 leaves mid-part: atomic_open's temporaries of the .bin and .idx being written
    (out / "prose" / ".train.bin.q1w2e3r4.tmp").write_bytes(b"\0" * 4096)
    (out / "prose" / ".train.idx.a_s_d_f_.tmp").write_bytes(b"\0" * 16)
    (out / ".manifest.json.zxcvbnm1.tmp").write_text("{")
    tokenize_corpus(cfg)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_a_rerun_of_data_build_removes_what_a_killed_one_left(tmp_path):
    from test_data_build import _cfg, _docs, _write_raw

    from pretrainlab.data.pipeline import build_clean_corpus

    _write_raw(tmp_path, {"web": _docs(6)})
    cfg = _cfg(tmp_path)
    build_clean_corpus(cfg)
    out = cfg.clean_dir
    stale = out.parent / f".{out.name}.tmp-3kf9_2ab"  # a build killed before its rename
    (stale / "web").mkdir(parents=True)
    (stale / "web" / "train.jsonl").write_text("{}\n")
    build_clean_corpus(cfg)  # up to date: nothing rebuilt, the leftover still goes
    assert not stale.exists()
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []
    assert json.loads((out / "manifest.json").read_text())["counts"]
    assert os.listdir(out)
