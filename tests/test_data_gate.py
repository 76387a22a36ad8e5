"""The compliance gate decides per file: no byte of a file that a refused source matches reaches the
clean corpus (or its quarantine) in any mode, however entries overlap; such files are never opened,
and the manifest lists every refused file and why. Plus the approval fields and duplicate keys of
sources.yaml."""

from __future__ import annotations

import builtins
import io
import json
import os
from pathlib import Path

import pytest
import yaml

from pretrainlab.config import load_config
from pretrainlab.data.pipeline import build_clean_corpus
from pretrainlab.data.report import write_data_report
from pretrainlab.data.sources import latest_date_anywhere, load_registry
from pretrainlab.errors import DataError

MARKER = "ZQXPENDINGMARKER"
APPROVAL = {"status": "approved", "by": "legal", "date": "2026-11-01"}
PENDING = {"status": "pending", "by": "legal", "date": "2026-11-02"}


def _prose(i: int) -> str:
    return f"Document number {i} talks about rivers, mountains and the weather in spring. " * 3


def _jsonl(texts: list[str]) -> bytes:
    return b"".join(json.dumps({"text": t}).encode() + b"\n" for t in texts)


def _raw(tmp_path: Path, form: str) -> tuple[Path, Path]:
    """An approved source and a pending one whose file holds MARKER, overlapping as ``form`` says;
    returns (raw folder, the pending file)."""
    raw = tmp_path / "raw"
    (raw / "web").mkdir(parents=True)
    (raw / "scraped").mkdir()
    (raw / "web" / "a.jsonl").write_bytes(_jsonl([_prose(1), _prose(2)]))
    secret = raw / "scraped" / "s.jsonl"
    secret.write_bytes(_jsonl([f"{MARKER} {_prose(3)}", f"{_prose(4)} {MARKER}"]))
    web = {
        "glob": {"path": "**/*.jsonl"},
        "folder": {"path": ".", "format": "jsonl"},
        "same_file": {"path": "./scraped/../scraped/s.jsonl"},
        "symlink": {"path": "web"},
        "hardlink": {"path": "web"},
    }[form]
    if form == "symlink":
        (raw / "web" / "link.jsonl").symlink_to(secret)
    if form == "hardlink":
        os.link(secret, raw / "web" / "copy.jsonl")
    sources = {"web": web, "ok": {"path": "web/a.jsonl"}, "scraped": {"path": "scraped/s.jsonl", "approval": PENDING}}
    full = {n: {"license": "CC0-1.0", "approval": APPROVAL, **s} for n, s in sources.items()}
    (raw / "sources.yaml").write_text(yaml.safe_dump({"sources": full}, sort_keys=False))
    return raw, secret


def _cfg(tmp_path: Path, *overrides: str):
    return load_config(None, [f"workdir={tmp_path}", "data.min_chars=20", "data.heldout_fraction=0",
                              "data.stages=[normalize, length_filter]", *overrides])


def _inode(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


@pytest.fixture
def opened(monkeypatch) -> set[tuple[int, int]]:
    """(device, inode) of every existing file opened through open() / io.open() / Path.open()."""
    seen: set[tuple[int, int]] = set()
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and os.path.isfile(file):
            seen.add(_inode(file))
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    return seen


def _everything_written(out: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file())


FORMS = ["glob", "folder", "same_file", "symlink", "hardlink"]


@pytest.mark.parametrize("form", FORMS)
def test_skip_mode_never_opens_a_file_a_refused_source_matches_whoever_else_matches_it(tmp_path, form, opened, capsys):
    raw, secret = _raw(tmp_path, form)
    opened.clear()  # (writing the inputs opened them)
    build_clean_corpus(_cfg(tmp_path, "data.unapproved=skip"))
    clean = tmp_path / "clean"
    assert MARKER.encode() not in _everything_written(clean)  # corpus, quarantine, stats, manifest
    assert _inode(secret) not in opened
    m = json.loads((clean / "manifest.json").read_text())
    refused = {p: f for f in m["refused_files"] for p in f["paths"]}
    assert "refused source 'scraped'" in refused[str(secret.resolve())]["reason"]
    assert m["sources"]["ok"] and "scraped" not in m["sources"] and "scraped" in m["refused_sources"]
    err = " ".join(capsys.readouterr().err.split())
    assert "nothing of it was read" not in err and "none of its 1 file(s) was opened" in err
    if form == "same_file":  # the approved entry is left with no file: refused as well, and said why
        assert m["refused_sources"]["web"]["reason"].startswith("every file it matches is refused")
    else:
        assert "also matched by web" in err and "never opened as data" in err


@pytest.mark.parametrize("form", FORMS)
def test_error_mode_refuses_the_build_and_writes_nothing(tmp_path, form, opened):
    raw, secret = _raw(tmp_path, form)
    opened.clear()
    with pytest.raises(DataError, match="'scraped' \\(approval.status is 'pending'\\).*data.unapproved=skip"):
        build_clean_corpus(_cfg(tmp_path))
    assert not (tmp_path / "clean").exists() and _inode(secret) not in opened


def test_a_folder_entry_never_reads_the_registry_as_data(tmp_path, opened):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "notes.txt").write_text(_prose(1))
    (raw / "sources.yaml").write_text(yaml.safe_dump({"sources": {"all": {"path": ".", "license": "CC0-1.0", "approval": APPROVAL}}}))
    build_clean_corpus(_cfg(tmp_path))
    clean = tmp_path / "clean"
    ids = [json.loads(line)["id"] for line in (clean / "all" / "train-00000.jsonl").read_text().splitlines()]
    assert ids == ["all:notes.txt"] and b"CC0-1.0" not in (clean / "quarantine.jsonl").read_bytes()
    refused = json.loads((clean / "manifest.json").read_text())["refused_files"]
    assert refused == [{"path": str((raw / "sources.yaml").resolve()), "reason": "the source registry (sources.yaml) is never data",
                        "matched_by": ["all"], "paths": [str((raw / "sources.yaml").resolve())]}]


def test_a_link_out_of_an_approved_folder_is_refused_in_both_modes(tmp_path, opened):
    raw = tmp_path / "raw"
    (raw / "web").mkdir(parents=True)
    (raw / "web" / "a.jsonl").write_bytes(_jsonl([_prose(1)]))
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_bytes(_jsonl([f"{MARKER} {_prose(2)}"]))
    (raw / "web" / "b.jsonl").symlink_to(outside)
    (raw / "sources.yaml").write_text(yaml.safe_dump({"sources": {"web": {"path": "web", "license": "MIT", "approval": APPROVAL}}}))
    opened.clear()
    with pytest.raises(DataError, match="is a link to .*elsewhere.jsonl, outside the folder the source names"):
        build_clean_corpus(_cfg(tmp_path))
    assert _inode(outside) not in opened
    build_clean_corpus(_cfg(tmp_path, "data.unapproved=skip"))
    assert MARKER.encode() not in _everything_written(tmp_path / "clean") and _inode(outside) not in opened
    (f,) = json.loads((tmp_path / "clean" / "manifest.json").read_text())["refused_files"]
    assert f["path"] == str(outside.resolve()) and "a link out of" in f["reason"]


def test_an_approved_source_left_with_only_the_registry_is_an_error_naming_why(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "sources.yaml").write_text(yaml.safe_dump({"sources": {"all": {"path": "*.yaml", "license": "MIT", "approval": APPROVAL}}}))
    with pytest.raises(DataError, match="source 'all': every file .* matches is refused .*sources.yaml.*is never data"):
        build_clean_corpus(_cfg(tmp_path))


def test_a_data_out_inside_the_input_is_never_read_back(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_bytes(_jsonl([_prose(1), _prose(2)]))
    (raw / "sources.yaml").write_text(yaml.safe_dump({"sources": {"all": {"path": "**/*.jsonl", "license": "MIT", "approval": APPROVAL}}}))
    cfg = _cfg(tmp_path, f"data.out={raw / 'clean'}", "data.stages=[normalize]")
    build_clean_corpus(cfg)
    (raw / "a.jsonl").write_bytes(_jsonl([_prose(1), _prose(2), _prose(3)]))  # a change: a real rebuild
    summary = build_clean_corpus(cfg)
    assert summary["totals"]["docs_in"] == 3  # not the previous corpus' train-00000.jsonl as well


# --------------------------------------------------------------------------- approval fields, duplicate keys


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(text)
    (tmp_path / "x.jsonl").write_bytes(_jsonl([_prose(1)]))
    return path


@pytest.mark.parametrize("approval,license_,field,says", [
    ("{status: approved, by: legal, date: 2999-01-01}", "MIT", "approval.date", "in the future"),
    ("{status: approved, by: legal, date: last tuesday}", "MIT", "approval.date", "not a date"),
    ("{status: approved, by: legal, date: 20260105}", "MIT", "approval.date", "a number"),
    ("{status: approved, by: legal, date: 2026-13-45}", "MIT", "approval.date", "not a date"),
    ("{status: approved, by: '  ', date: 2026-01-05}", "MIT", "approval.by", "blank"),
    ("{status: approved, by: 42, date: 2026-01-05}", "MIT", "approval.by", "a number"),
    ("{status: approved, by: [a, b], date: 2026-01-05}", "MIT", "approval.by", "not a string"),
    ("{status: approved, by: legal, date: 2026-01-05}", "''", "license", "blank"),
    ("{status: approved, by: legal, date: 2026-01-05}", "2.0", "license", "a number"),
])
def test_approval_fields_are_checked_not_just_present(tmp_path, approval, license_, field, says):
    path = _write(tmp_path, f"sources:\n  x:\n    path: x.jsonl\n    license: {license_}\n    approval: {approval}\n")
    with pytest.raises(DataError, match=f"field '{field}' .*{says}") as exc:
        load_registry(path)
    assert "\n" not in str(exc.value)


def test_a_good_approval_passes_with_a_date_or_a_quoted_iso_date(tmp_path):
    today = latest_date_anywhere().isoformat()
    for date in ("2026-01-05", f"'{today}'", "2026-01-05 10:30:00"):
        path = _write(tmp_path, f"sources:\n  x:\n    path: x.jsonl\n    license: MIT\n"
                                f"    approval: {{status: approved, by: legal, date: {date}}}\n")
        assert load_registry(path)[0].license == "MIT"


@pytest.mark.parametrize("text,key", [
    ("sources:\n  web: {path: a.jsonl}\n  web: {path: b.jsonl}\n", "web"),
    ("sources:\n  x:\n    path: x.jsonl\n    approval: {status: approved, by: a, date: 2026-01-01}\n"
     "    license: MIT\n    approval: {status: pending}\n", "approval"),
    ("sources:\n  x: {path: x.jsonl, license: MIT, license: GPL}\n", "license"),
    ("sources: {}\nsources:\n  x: {path: x.jsonl}\n", "sources"),
])
def test_a_key_written_twice_anywhere_is_an_error_not_last_one_wins(tmp_path, text, key):
    with pytest.raises(DataError, match=f"key '{key}' is written twice \\(lines \\d+ and \\d+\\)"):
        load_registry(_write(tmp_path, text))


@pytest.mark.parametrize("spec,says", [
    ("{path: 123}", "field 'path' is 123 \\(a number\\); it must be a string"),
    ("{path: x.jsonl, group: [a, b]}", "field 'group' is \\['a', 'b'\\] \\(a list\\); it must be one mixing-group name"),
])
def test_misleading_field_messages_say_what_is_wrong(tmp_path, spec, says):
    path = _write(tmp_path, f"sources:\n  x: {spec}\n")
    with pytest.raises(DataError, match=says):
        load_registry(path)


def test_an_existing_empty_folder_says_it_has_no_data_files_not_that_it_is_missing(tmp_path):
    raw = tmp_path / "raw"
    (raw / "docs").mkdir(parents=True)
    (raw / "docs" / ".hidden").write_text("x")
    (raw / "sources.yaml").write_text(yaml.safe_dump({"sources": {"d": {"path": "docs", "license": "MIT", "approval": APPROVAL}}}))
    with pytest.raises(DataError, match="folder .*docs contains no data files") as exc:
        build_clean_corpus(_cfg(tmp_path))
    assert "not found" not in str(exc.value)


def test_an_admitted_file_that_cannot_be_read_is_one_line_naming_it(tmp_path, monkeypatch):
    raw, secret = _raw(tmp_path, "glob")
    unreadable = raw / "web" / "a.jsonl"
    real_open = builtins.open

    def deny(file, *args, **kwargs):  # tests run as root, where chmod 000 does not deny a read
        if isinstance(file, (str, os.PathLike)) and Path(file).resolve() == unreadable.resolve():
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", deny)
    monkeypatch.setattr(io, "open", deny)
    with pytest.raises(DataError, match=r"cannot read .*a\.jsonl \(Permission denied\); fix its permissions"):
        build_clean_corpus(_cfg(tmp_path, "data.unapproved=skip"))
    assert not (tmp_path / "clean").exists()


def test_the_governance_report_lists_every_refused_file_and_why(tmp_path):
    raw, secret = _raw(tmp_path, "symlink")
    build_clean_corpus(_cfg(tmp_path, "data.unapproved=skip"))
    json_path, html_path = write_data_report(tmp_path / "clean")
    listed = {f["path"]: f for f in json.loads(json_path.read_text())["refused_files"]}
    assert "refused source 'scraped'" in listed[str(secret.resolve())]["reason"]
    page = html_path.read_text()
    assert "Refused files (never opened)" in page and secret.name in page and MARKER not in page
