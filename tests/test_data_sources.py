"""`data build` end to end: readers for every format, the compliance gate, count conservation,
near-dedup across sources, the no-op rebuild, the governance report and the exit code."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
import yaml

from pretrainlab.cli import main
from pretrainlab.config import load_config
from pretrainlab.data.pipeline import build_clean_corpus
from pretrainlab.data.report import write_data_report
from pretrainlab.errors import DataError

ZH2 = ("今年春天，研究小组走访了十几个村庄，记录下老人们讲述的故事。他们发现，许多传统手艺已经很少有年轻人学习，"
       "于是决定把这些经验整理成书，并在学校里开设相关的课程，让孩子们有机会亲手尝试。")
APPROVAL = {"status": "approved", "by": "legal", "date": "2026-11-01"}


def _prose(seed: int, n: int = 12) -> str:
    rng = random.Random(seed)

    def word() -> str:
        return "".join(rng.choice("abcdefghiklmnoprstuvwy") for _ in range(rng.randint(3, 8)))
    return " ".join(" ".join(["the", *(word() for _ in range(9)), "of"]).capitalize() + "." for _ in range(n))


def _registry(raw: Path, sources: dict[str, dict]) -> None:
    full = {name: {"license": "CC0-1.0", "approval": APPROVAL, **spec} for name, spec in sources.items()}
    (raw / "sources.yaml").write_text(yaml.safe_dump({"sources": full}, sort_keys=False))


def _jsonl(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)


def _cfg(root: Path, *overrides: str):
    return load_config(None, [f"workdir={root}", "data.min_chars=20", "data.heldout_fraction=0", *overrides])


def _out_ids(clean: Path, source: str) -> set[str]:
    return {json.loads(line)["id"] for line in (clean / source / "train-00000.jsonl").read_text().splitlines()}


def test_every_format_is_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    raw = tmp_path / "raw"
    (raw / "shards").mkdir(parents=True)
    (raw / "a.jsonl.gz").write_bytes(gzip.compress(_jsonl([{"id": "gz1", "body": _prose(1)}])))
    (raw / "shards" / "p1.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl([{"id": "zst1", "text": _prose(2)}])))
    (raw / "shards" / "p2.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl([{"id": "zst2", "text": _prose(3)}])))
    pq.write_table(pa.table({"id": ["pq1", "pq2"], "content": [_prose(4), _prose(5)]}), raw / "t.parquet")
    (raw / "docs" / "sub").mkdir(parents=True)
    (raw / "docs" / "one.txt").write_text(_prose(6))
    (raw / "docs" / "sub" / "two.md").write_text(_prose(7))
    (raw / "docs" / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    (raw / "docs" / "latin1.txt").write_bytes(_prose(8).encode() + b" caf\xe9")
    _registry(raw, {
        "gz": {"path": "a.jsonl.gz", "text_field": "body"},
        "zst": {"path": "shards/*.jsonl.zst"},
        "pq": {"path": "t.parquet", "text_field": "content"},
        "txt": {"path": "docs", "format": "text"},
    })
    summary = build_clean_corpus(_cfg(tmp_path, "data.stages=[normalize, length_filter]"))
    clean = tmp_path / "clean"
    assert _out_ids(clean, "gz") == {"gz1"}
    assert _out_ids(clean, "zst") == {"zst1", "zst2"}
    assert _out_ids(clean, "pq") == {"pq1", "pq2"}
    assert _out_ids(clean, "txt") == {"txt:one.txt", "txt:sub/two.md"}
    assert summary["sources"]["txt"]["removed"] == {"binary_file": 1, "invalid_utf8": 1}
    m = json.loads((clean / "manifest.json").read_text())
    assert len(m["inputs"]["files"]["zst"]["files"]) == 2 and m["sources"]["pq"]["format"] == "parquet"


def test_oversized_empty_and_corrupt_records_are_quarantined_and_counted(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    good = [{"id": f"g{i}", "text": _prose(i)} for i in range(3)]
    (raw / "s.jsonl").write_bytes(_jsonl([*good, {"id": "huge", "text": "x" * 5000}, {"id": "blank", "text": "  "}]))
    (raw / "z.jsonl.gz").write_bytes(gzip.compress(_jsonl(good[:1]))[:-12] + b"garbage!")  # truncated stream
    _registry(raw, {"s": {"path": "s.jsonl"}, "z": {"path": "z.jsonl.gz"}})
    summary = build_clean_corpus(_cfg(tmp_path, "data.max_doc_bytes=2000", "data.stages=[normalize]"))
    assert summary["sources"]["s"]["removed"] == {"too_large": 1, "empty_text": 1}
    assert summary["sources"]["z"]["removed"].get("corrupt_file") == 1
    q = [json.loads(line) for line in (tmp_path / "clean" / "quarantine.jsonl").read_text().splitlines()]
    assert {r["code"] for r in q} >= {"too_large", "empty_text", "corrupt_file"} and all(r["stage"] == "read" for r in q)


def test_cli_exit_status_says_records_were_lost(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "s.jsonl").write_bytes(_jsonl([{"text": _prose(1)}]) + b"{broken\n")
    _registry(raw, {"s": {"path": "s.jsonl"}})
    with pytest.raises(SystemExit) as exc:
        main(["data", "build", "--workdir", str(tmp_path), "--min-chars", "20", "--set", "data.stages=[normalize]"])
    assert exc.value.code == 3 and "could not be read" in capsys.readouterr().err


def test_compliance_gate_skip_mode_reads_nothing_of_refused_sources_and_records_them(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "ok.jsonl").write_bytes(_jsonl([{"text": _prose(1)}, {"text": _prose(2)}]))
    _registry(raw, {"ok": {"path": "ok.jsonl"},
                    "scraped": {"path": "missing.jsonl", "approval": {"status": "rejected", "by": "legal", "date": "2026-11-02"}}})
    with pytest.raises(DataError, match="'scraped' \\(approval.status is 'rejected'\\)"):
        build_clean_corpus(_cfg(tmp_path))
    build_clean_corpus(_cfg(tmp_path, "data.unapproved=skip", "data.stages=[normalize]"))
    m = json.loads((tmp_path / "clean" / "manifest.json").read_text())
    assert set(m["sources"]) == {"ok"} and m["refused_sources"]["scraped"]["approval"]["status"] == "rejected"
    assert m["sources"]["ok"]["license"] == "CC0-1.0" and m["sources"]["ok"]["approval"]["by"] == "legal"


@pytest.mark.parametrize("spec,field", [
    ({"path": "x.jsonl", "approval": {"status": "ok"}}, "approval.status"),
    ({"path": "x.jsonl", "approval": {"status": "approved", "date": "2026-01-01"}}, "approval.by"),
    ({"path": "x.jsonl", "approval": {"status": "approved", "by": "a", "date": "2026-01-01"}, "license": None}, "license"),
    ({"path": "x.jsonl", "pii_policy": "hide"}, "pii_policy"),
    ({"path": "x.csv", "format": "csv"}, "format"),
    ({"approval": APPROVAL}, "path"),
    ({"path": "x.jsonl", "skip_stages": ["gopher"]}, "skip_stages"),
])
def test_a_bad_sources_yaml_names_the_field(tmp_path, spec, field):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "x.jsonl").write_bytes(_jsonl([{"text": _prose(1)}]))
    full = {"license": "MIT", "approval": APPROVAL, **spec}
    if full.get("license") is None:
        full.pop("license")
    (raw / "sources.yaml").write_text(yaml.safe_dump({"sources": {"x": full}}))
    with pytest.raises(DataError, match=f"field '{field}'"):
        build_clean_corpus(_cfg(tmp_path))


def test_full_pipeline_conserves_counts_removes_near_duplicates_across_sources_and_reports(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    base = _prose(100, 20)
    near = base.replace("The", "A", 1)  # one word changed
    zh = ("数据准备是大模型预训练的基础，也是最主要的瓶颈。我们在清洗流程中去除重复的网页和低质量的文本，"
          "并且对隐私信息进行脱敏处理。这些步骤都有详细的记录，以便审计人员随时检查。")
    a = [{"id": "a0", "text": base}, {"id": "a1", "text": _prose(1, 20) + " Mail bob@example.com now."},
         {"id": "a2", "text": "short"}, {"id": "a3", "text": zh + ZH2}]
    b = [{"id": "b0", "text": near}, {"id": "b1", "text": base}, {"id": "b2", "text": _prose(2, 20)}]
    (raw / "a.jsonl").write_bytes(_jsonl(a))
    (raw / "b.jsonl").write_bytes(_jsonl(b))
    _registry(raw, {"a": {"path": "a.jsonl", "pii_policy": "redact"}, "b": {"path": "b.jsonl", "skip_stages": ["c4_lines"]}})
    cfg = _cfg(tmp_path, "data.min_chars=50", "data.quality.min_words=20")
    summary = build_clean_corpus(cfg)
    clean = tmp_path / "clean"
    stats = json.loads((clean / "stats.json").read_text())
    for name, s in stats["sources"].items():
        assert s["docs_in"] == s["docs_out"] + sum(s["removed"].values())
    q = [json.loads(line) for line in (clean / "quarantine.jsonl").read_text().splitlines()]
    assert len(q) == stats["totals"]["quarantined"] == stats["totals"]["docs_in"] - stats["totals"]["docs_out"]
    by_id = {r["id"]: r for r in q}
    assert by_id["b0"]["code"] == "near_duplicate" and "cluster a0" in by_id["b0"]["reason"]
    assert by_id["b1"]["code"] == "duplicate" and by_id["a2"]["code"] == "too_short"
    assert stats["stages"]["c4_lines"]["docs_skipped"] == 3  # b's documents bypass it (skip_stages)
    docs = {json.loads(x)["id"]: json.loads(x) for x in (clean / "a" / "train-00000.jsonl").read_text().splitlines()}
    assert "<EMAIL>" in docs["a1"]["text"] and docs["a1"]["meta"]["pii"] == {"email": 1}
    assert docs["a3"]["meta"]["lang"] == "zh" and summary["totals"]["docs_out"] == stats["totals"]["docs_out"]

    json_path, html_path = write_data_report(clean)
    report = json.loads(json_path.read_text())
    assert report["sources"]["b"]["duplicate_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert report["languages"]["zh"] == 1 and report["pii"]["detections"] == {"email": 1}
    assert "near_dedup:near_duplicate" in report["quarantine_samples"]
    html_text = html_path.read_text()
    assert "<svg" in html_text and "http" not in html_text.replace("http-equiv", "")


def test_an_unchanged_rebuild_does_no_work_and_a_change_bumps_the_version(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "s.jsonl").write_bytes(_jsonl([{"text": _prose(i)} for i in range(3)]))
    _registry(raw, {"s": {"path": "s.jsonl"}})
    first = build_clean_corpus(_cfg(tmp_path, "data.stages=[normalize]"))
    mtime = (tmp_path / "clean" / "manifest.json").stat().st_mtime_ns
    again = build_clean_corpus(_cfg(tmp_path, "data.stages=[normalize]"))
    assert again["up_to_date"] and again["manifest_id"] == first["manifest_id"] and first["dataset_version"] == "dataset-v0.1"
    assert (tmp_path / "clean" / "manifest.json").stat().st_mtime_ns == mtime
    changed = build_clean_corpus(_cfg(tmp_path, "data.stages=[normalize, exact_dedup]"))
    assert not changed["up_to_date"] and changed["manifest_id"] != first["manifest_id"]
    assert changed["dataset_version"] == "dataset-v0.2"


def test_a_corrupt_zstd_file_is_reported_not_fatal(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "ok.jsonl").write_bytes(_jsonl([{"text": _prose(1)}]))
    (raw / "bad.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"not really zstd" * 10)
    _registry(raw, {"ok": {"path": "ok.jsonl"}, "bad": {"path": "bad.jsonl.zst"}})
    summary = build_clean_corpus(_cfg(tmp_path, "data.stages=[normalize]"))
    assert summary["sources"]["bad"]["removed"] == {"corrupt_file": 1} and summary["sources"]["ok"]["docs_out"] == 1


DEEP = b'{"text": "deep", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}\n"  # past the recursion limit


def test_nothing_a_record_contains_stops_the_build_or_the_rest_of_its_file(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    deep_meta = {"id": "deepmeta", "text": _prose(3), "meta": {}}
    node = deep_meta["meta"]
    for _ in range(80):
        node["m"] = {}
        node = node["m"]
    lines = [_jsonl([{"id": "first", "text": _prose(1)}]), DEEP, b'{"text": "big", "n": ' + b"7" * 5000 + b"}\n",
             _jsonl([deep_meta, {"id": "last", "text": _prose(2)}])]
    (raw / "s.jsonl").write_bytes(b"".join(lines))
    _registry(raw, {"s": {"path": "s.jsonl"}})
    summary = build_clean_corpus(_cfg(tmp_path, "data.stages=[normalize]"))
    assert _out_ids(tmp_path / "clean", "s") == {"first", "last"}
    assert summary["sources"]["s"]["removed"] == {"too_deep": 2, "invalid_json": 1}
    q = {r["line"]: r for r in map(json.loads, (tmp_path / "clean" / "quarantine.jsonl").read_text().splitlines())}
    assert q[2]["reason"] == "line 2: JSON nested too deeply to parse" and "4300 digits" in q[3]["reason"]
    assert q[4]["reason"] == "line 4: 'meta' nests deeper than 64 levels"


def test_compression_is_detected_by_content_and_a_byte_order_mark_costs_no_record(tmp_path):
    import zstandard

    raw = tmp_path / "raw"
    (raw / "docs").mkdir(parents=True)
    bom = b"\xef\xbb\xbf"
    (raw / "plain.jsonl.gz").write_bytes(bom + _jsonl([{"id": "p1", "text": _prose(1)}, {"id": "p2", "text": _prose(2)}]))
    (raw / "packed.jsonl").write_bytes(gzip.compress(bom + _jsonl([{"id": "g1", "text": _prose(3)}])))
    (raw / "packed.json").write_bytes(zstandard.ZstdCompressor().compress(_jsonl([{"id": "z1", "text": _prose(4)}])))
    (raw / "docs" / "a.txt").write_bytes(bom + _prose(5).encode())
    _registry(raw, {"plain": {"path": "plain.jsonl.gz"}, "gz": {"path": "packed.jsonl"}, "zst": {"path": "packed.json"},
                    "txt": {"path": "docs", "format": "text"}})
    summary = build_clean_corpus(_cfg(tmp_path, "data.stages=[length_filter]"))  # (normalize would drop a BOM too)
    clean = tmp_path / "clean"
    assert [_out_ids(clean, s) for s in ("plain", "gz", "zst")] == [{"p1", "p2"}, {"g1"}, {"z1"}]
    assert summary["totals"]["bad_records"] == 0
    (doc,) = [json.loads(line) for line in (clean / "txt" / "train-00000.jsonl").read_text().splitlines()]
    assert doc["text"] == _prose(5)  # no U+FEFF left at the start
    assert json.loads((clean / "manifest.json").read_text())["inputs"]["files"]["plain"]["lines"] == 2


def test_data_report_cli_writes_offline_html_and_json(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "s.jsonl").write_bytes(_jsonl([{"text": _prose(i)} for i in range(3)] + [{"text": "tiny"}]))
    _registry(raw, {"s": {"path": "s.jsonl"}})
    build_clean_corpus(_cfg(tmp_path, "data.stages=[normalize, length_filter, langid]"))
    assert main(["data", "report", "--workdir", str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    assert "governance.html" in capsys.readouterr().out
    data = json.loads((tmp_path / "rep" / "governance.json").read_text())
    assert data["sources"]["s"]["docs_out"] == 3 and data["sources"]["s"]["token_share"] == 1.0
    assert data["quarantine_samples"]["length_filter:too_short"][0]["preview"] == "tiny"
    assert "<script" not in (tmp_path / "rep" / "governance.html").read_text()
    assert main(["data", "report", str(tmp_path / "nothing")]) == 2  # one-line error, exit 2


def _without_seconds(obj):
    if isinstance(obj, dict):
        return {k: _without_seconds(v) for k, v in obj.items() if k != "seconds"}
    return obj


def test_executor_worker_processes_give_the_same_corpus_quarantine_and_stats(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    recs = [{"id": f"d{i}", "text": _prose(i % 150, 20) + (" Mail bob@example.com." if i % 7 == 0 else "")} for i in range(300)]
    recs[5] = {"id": "short", "text": "tiny"}
    lines = _jsonl(recs[:100]) + b"{broken\n" + _jsonl(recs[100:]) + b"[1]\n"
    (raw / "a.jsonl").write_bytes(lines)
    (raw / "b.jsonl").write_bytes(_jsonl([{"id": "b0", "text": _prose(3, 20)}, {"id": "b1", "text": _prose(900, 20)}]))
    _registry(raw, {"a": {"path": "a.jsonl", "pii_policy": "redact"}, "b": {"path": "b.jsonl", "skip_stages": ["c4_lines"]}})
    common = ["data.min_chars=50", "data.quality.min_words=20", "data.pii.trend_batch_docs=50"]
    build_clean_corpus(_cfg(tmp_path, *common, f"data.out={tmp_path / 'one'}"))
    build_clean_corpus(_cfg(tmp_path, *common, f"data.out={tmp_path / 'two'}", "data.executor.min_input_mb=0", "data.executor.workers=2"))
    one, two = tmp_path / "one", tmp_path / "two"
    for rel in ("a/train-00000.jsonl", "b/train-00000.jsonl", "quarantine.jsonl"):
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
    s1, s2 = (json.loads((d / "stats.json").read_text()) for d in (one, two))
    assert _without_seconds(s1["stages"]) == _without_seconds(s2["stages"])
    assert s1["sources"] == s2["sources"] and s1["totals"] == s2["totals"]
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (one, two))
    assert m1["manifest_id"] == m2["manifest_id"]  # workers change speed, not the dataset
    batches = s1["stages"]["pii"]["extra"]["batches"]
    assert batches[0]["docs"] == 49  # the window of the first 50 documents read, less the one too short
    assert sum(b["docs"] for b in batches) == s1["stages"]["pii"]["docs_in"] and len(batches) == 7
