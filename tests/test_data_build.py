"""`data build`: approved raw sources -> normalized, filtered, deduplicated, split clean corpus."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from pretrainlab.config import load_config
from pretrainlab.data.filters import normalize_text
from pretrainlab.data.pipeline import build_clean_corpus, heldout_value
from pretrainlab.errors import ConfigError, DataError

LONG = "This sentence is long enough to pass the length filter in these tests. "


def _spec(path: str, status: str = "approved") -> dict:
    return {
        "path": path,
        "format": "jsonl",
        "text_field": "text",
        "languages": ["en"],
        "license": "CC0-1.0",
        "approval": {"status": status, "by": "tests", "date": "2026-01-01"},
        "modality": "text",
        "pii_policy": "keep",
    }


def _write_raw(root: Path, sources: dict[str, list], status: dict[str, str] | None = None) -> Path:
    """sources: name -> list of records (dicts, or raw bytes for a literal line)."""
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    registry = {}
    for name, records in sources.items():
        lines = []
        for i, rec in enumerate(records):
            if isinstance(rec, bytes):
                lines.append(rec)
            else:
                rec = {"id": f"{name}:{i}", "source": name, "meta": {}, **rec}
                lines.append(json.dumps(rec).encode())
        (raw / f"{name}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        registry[name] = _spec(f"{name}.jsonl", (status or {}).get(name, "approved"))
    (raw / "sources.yaml").write_text(yaml.safe_dump({"sources": registry}, sort_keys=False))
    return raw


BASIC_STAGES = "data.stages=[normalize, length_filter, exact_dedup]"


def _cfg(root: Path, *overrides: str):
    return load_config(None, [f"workdir={root}", "data.min_chars=20", BASIC_STAGES, *overrides])


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _all_docs(clean: Path, source: str) -> dict[str, dict]:
    docs = {}
    for split in ("train", "heldout"):
        for r in _read(clean / source / f"{split}-00000.jsonl"):
            docs[r["id"]] = {**r, "split": split}
    return docs


def _docs(n: int, prefix: str = "doc") -> list[dict]:
    return [{"text": f"{prefix} {i}: {LONG}"} for i in range(n)]


# --------------------------------------------------------------------------- stages


def test_normalize_applies_nfc_newlines_control_chars_and_whitespace():
    text = "\ufeffCafe\u0301 \r\nline with trailing   \r\n\n\n\n\n\nbell\x07 tab\tkept\x85\n\n"
    assert normalize_text(text) == "Café\nline with trailing\n\n\nbell tab\tkept"
    assert normalize_text("a\x07b", strip_control_chars=False) == "a\x07b"
    assert normalize_text("a  \n\n\n\n\nb", collapse_whitespace=False) == "a  \n\n\n\n\nb"


def test_documents_are_normalized_in_the_clean_corpus(tmp_path):
    _write_raw(tmp_path, {"s": [{"text": "Cafe\u0301\r\n" + LONG + "   \r\n\n\n\n\n\nend\x00"}, *_docs(3)]})
    build_clean_corpus(_cfg(tmp_path))
    doc = _all_docs(tmp_path / "clean", "s")["s:0"]
    assert doc["text"] == "Café\n" + LONG.rstrip() + "\n\n\nend"
    assert set(doc) == {"id", "text", "source", "meta", "split"}


def test_length_filter_quarantines_short_and_long_documents(tmp_path):
    _write_raw(tmp_path, {"s": [{"text": "tiny"}, {"text": LONG * 10}, *_docs(3)]})
    summary = build_clean_corpus(_cfg(tmp_path, "data.max_chars=500"))
    assert summary["sources"]["s"]["removed"] == {"too_short": 1, "too_long": 1}
    q = {r["id"]: r for r in _read(tmp_path / "clean" / "quarantine.jsonl")}
    assert q["s:0"]["stage"] == "length_filter" and q["s:0"]["code"] == "too_short" and q["s:0"]["preview"] == "tiny"
    assert q["s:1"]["code"] == "too_long" and "max_chars=500" in q["s:1"]["reason"]
    stats = json.loads((tmp_path / "clean" / "stats.json").read_text())
    lf = stats["stages"]["length_filter"]
    assert lf["docs_in"] == 5 and lf["docs_out"] == 3 and lf["removed"] == {"too_long": 1, "too_short": 1}
    assert lf["chars_in"] > lf["chars_out"] and "seconds" in lf


def test_exact_dedup_keeps_the_first_occurrence_across_sources_and_names_it(tmp_path):
    same = "Shared license text. " + LONG
    _write_raw(tmp_path, {
        "a": [{"text": same}, *_docs(2, "a")],
        "b": [{"text": same + "   \n\n"}, {"text": same}, *_docs(2, "b")],  # equal after normalization
    })
    summary = build_clean_corpus(_cfg(tmp_path))
    assert summary["sources"]["a"]["removed"] == {}
    assert summary["sources"]["b"]["removed"] == {"duplicate": 2}
    q = [r for r in _read(tmp_path / "clean" / "quarantine.jsonl") if r["code"] == "duplicate"]
    assert {r["id"] for r in q} == {"b:0", "b:1"}
    assert all(r["stage"] == "exact_dedup" and r["reason"] == "exact duplicate of a:0" for r in q)
    assert "a:0" in _all_docs(tmp_path / "clean", "a")


def test_unknown_stage_name_is_a_config_error_with_a_hint(tmp_path):
    _write_raw(tmp_path, {"s": _docs(3)})
    with pytest.raises(ConfigError, match="did you mean 'exact_dedup'"):
        build_clean_corpus(_cfg(tmp_path, "data.stages=[normalize, exact_dedupe]"))


# --------------------------------------------------------------------------- split


def test_split_is_by_text_hash_and_identical_across_builds(tmp_path):
    _write_raw(tmp_path, {"s": _docs(200)})
    build_clean_corpus(_cfg(tmp_path, "data.heldout_fraction=0.2", f"data.out={tmp_path / 'one'}"))
    build_clean_corpus(_cfg(tmp_path, "data.heldout_fraction=0.2", f"data.out={tmp_path / 'two'}"))
    one, two = _all_docs(tmp_path / "one", "s"), _all_docs(tmp_path / "two", "s")
    assert {k: v["split"] for k, v in one.items()} == {k: v["split"] for k, v in two.items()}
    for doc in one.values():
        assert (doc["split"] == "heldout") == (heldout_value(doc["text"]) < 0.2)
    held = sum(d["split"] == "heldout" for d in one.values())
    assert 20 <= held <= 60
    m1 = json.loads((tmp_path / "one" / "manifest.json").read_text())
    m2 = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert m1["manifest_id"] == m2["manifest_id"]
    assert m1["outputs"]["s/train-00000.jsonl"]["sha256"] == m2["outputs"]["s/train-00000.jsonl"]["sha256"]


def test_a_tiny_source_still_gets_one_heldout_document(tmp_path):
    _write_raw(tmp_path, {"s": _docs(3)})
    summary = build_clean_corpus(_cfg(tmp_path, "data.heldout_fraction=0.01"))
    assert summary["sources"]["s"]["heldout_docs"] == 1
    docs = _all_docs(tmp_path / "clean", "s")
    held = [d for d in docs.values() if d["split"] == "heldout"]
    assert held[0]["text"] == min((d["text"] for d in docs.values()), key=heldout_value)
    stats = json.loads((tmp_path / "clean" / "stats.json").read_text())
    assert stats["sources"]["s"]["heldout_fallback"] is True and stats["sources"]["s"]["train_docs"] == 2


def test_heldout_fraction_zero_holds_out_nothing(tmp_path):
    _write_raw(tmp_path, {"s": _docs(5)})
    assert build_clean_corpus(_cfg(tmp_path, "data.heldout_fraction=0"))["sources"]["s"]["heldout_docs"] == 0


# --------------------------------------------------------------------------- bad input


def test_bad_records_are_quarantined_with_a_reason_and_counted_not_fatal(tmp_path):
    _write_raw(tmp_path, {"s": [
        *_docs(3),
        b'{"id": "broken", "text": "unterminated',
        b'{"id": "latin1", "text": "caf\xe9 ' + LONG.encode() + b'"}',
        {"id": "notext", "body": LONG},
        {"id": "numtext", "text": 42},
        b"[1, 2, 3]",
        {"id": "surrogate", "text": "\ud800" + LONG},
        *_docs(2, "after"),
    ]})
    summary = build_clean_corpus(_cfg(tmp_path))
    s = summary["sources"]["s"]
    assert s["docs_out"] == 5
    assert s["removed"] == {"invalid_json": 1, "invalid_utf8": 2, "missing_text": 1, "text_not_string": 1, "not_an_object": 1}
    q = {r["id"]: r for r in _read(tmp_path / "clean" / "quarantine.jsonl")}
    assert q["s:line4"]["stage"] == "read" and q["s:line4"]["code"] == "invalid_json" and q["s:line4"]["line"] == 4
    assert q["s:line5"]["code"] == "invalid_utf8" and q["s:line5"]["preview"].startswith('{"id": "latin1", "text": "caf')
    assert q["notext"]["code"] == "missing_text" and "'text'" in q["notext"]["reason"]
    assert q["surrogate"]["code"] == "invalid_utf8"
    stats = json.loads((tmp_path / "clean" / "stats.json").read_text())
    assert stats["sources"]["s"]["bad_records"] == 6 and stats["totals"]["quarantined"] == 6


def test_a_non_approved_source_is_refused_by_name_before_anything_is_read(tmp_path):
    raw = _write_raw(tmp_path, {"ok": _docs(3), "scraped": _docs(3)}, status={"scraped": "pending"})
    (raw / "scraped.jsonl").unlink()  # never opened: the refusal comes first
    with pytest.raises(DataError, match="'scraped'.*pending.*nothing of them was read"):
        build_clean_corpus(_cfg(tmp_path))
    assert not (tmp_path / "clean").exists()


def test_missing_sources_yaml_says_to_run_corpus_build(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(DataError, match="sources.yaml not found; run `pretrainlab corpus build` first"):
        build_clean_corpus(_cfg(tmp_path))
    with pytest.raises(DataError, match="run `pretrainlab corpus build` first"):
        build_clean_corpus(_cfg(tmp_path / "nowhere"))


def test_a_missing_source_file_is_a_data_error_naming_it(tmp_path):
    raw = _write_raw(tmp_path, {"s": _docs(3)})
    (raw / "s.jsonl").unlink()
    with pytest.raises(DataError, match="source 's': file .*s.jsonl not found"):
        build_clean_corpus(_cfg(tmp_path))


def test_everything_filtered_out_is_a_data_error_naming_the_stage_and_keeps_the_old_corpus(tmp_path):
    _write_raw(tmp_path, {"s": _docs(3)})
    build_clean_corpus(_cfg(tmp_path))
    before = (tmp_path / "clean" / "manifest.json").read_text()
    with pytest.raises(DataError, match="every document was removed.*length_filter removed 3 \\(too_short 3\\)"):
        build_clean_corpus(_cfg(tmp_path, "data.min_chars=100000"))
    assert (tmp_path / "clean" / "manifest.json").read_text() == before  # previous good corpus intact
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".clean")] == []  # no temp debris


def test_refuses_to_replace_a_directory_that_is_not_a_clean_corpus(tmp_path):
    _write_raw(tmp_path, {"s": _docs(3)})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="refusing to replace"):
        build_clean_corpus(_cfg(tmp_path, f"data.out={tmp_path / 'mine'}"))
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


# --------------------------------------------------------------------------- manifest


def test_manifest_records_input_hashes_licenses_config_and_outputs(tmp_path):
    raw = _write_raw(tmp_path, {"a": _docs(4, "a"), "b": _docs(4, "b")})
    summary = build_clean_corpus(_cfg(tmp_path))
    clean = tmp_path / "clean"
    m = json.loads((clean / "manifest.json").read_text())
    sha = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
    assert m["kind"] == "clean_corpus" and m["manifest_id"] == summary["manifest_id"] and m["code_version"]
    assert m["inputs"]["sources_yaml"]["sha256"] == sha(raw / "sources.yaml")
    assert m["inputs"]["files"]["a"]["sha256"] == sha(raw / "a.jsonl")
    assert m["sources"]["b"]["license"] == "CC0-1.0" and m["sources"]["b"]["approval"]["status"] == "approved"
    assert m["config"]["min_chars"] == 20 and m["stages"] == ["normalize", "length_filter", "exact_dedup"]
    for rel, out in m["outputs"].items():
        assert out["sha256"] == sha(clean / rel)
    assert m["outputs"]["a/train-00000.jsonl"]["docs"] + m["outputs"]["a/heldout-00000.jsonl"]["docs"] == 4
    # changing the input changes the id
    with open(raw / "a.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "a:new", "text": "new " + LONG}) + "\n")
    assert build_clean_corpus(_cfg(tmp_path))["manifest_id"] != m["manifest_id"]


def test_corpus_build_output_feeds_data_build(tmp_path):
    from pretrainlab.corpus.embedded import build_corpus

    cfg = load_config(None, [f"workdir={tmp_path}", "corpus.sources=[stdlib_code, stdlib_docstrings]",
                             "corpus.max_docs_per_source=4", "data.min_chars=1"])
    built = build_corpus(cfg)
    summary = build_clean_corpus(cfg)
    for name, s in built["sources"].items():
        assert summary["sources"][name]["docs_in"] == s["docs"]
        assert summary["sources"][name]["heldout_docs"] >= 1
