"""Data at scale: a clean corpus in numbered parts (one per work unit), the same bytes for any
number of workers or tasks, `data tokenize` as one executor task per part, and every reader
reading a source's parts as one stream."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_data_executor import EXEC, _cfg, _raw

from pretrainlab.config import load_config
from pretrainlab.data.corpusfiles import read_split_bytes, split_parts
from pretrainlab.data.pipeline import build_clean_corpus
from pretrainlab.tokenizer.shards import ShardReader, tokenize_corpus
from pretrainlab.tokenizer.train import train_tokenizer

pytestmark = pytest.mark.slow  # builds 2 corpora of ~40 parts and tokenizes them twice (~25 s)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _without_times(root: Path) -> dict[str, bytes]:
    """Every output file; stats.json and manifest.json without clock readings (and the
    executor settings the two builds differ in)."""
    files = _files(root)
    for name, drop in (("stats.json", ("seconds",)), ("manifest.json", ("created", "config", "stats.json"))):
        def strip(o):
            return {k: strip(v) for k, v in o.items() if k not in drop} if isinstance(o, dict) else o
        files[name] = json.dumps(strip(json.loads(files[name])), sort_keys=True).encode()
    return files


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The same input built on 1 and on 3 local workers (3 tasks), parts of ~4 KB."""
    tmp = tmp_path_factory.mktemp("scale")
    _raw(tmp)
    build_clean_corpus(_cfg(tmp, "one", *EXEC, "data.executor.workers=1"))
    build_clean_corpus(_cfg(tmp, "three", *EXEC, "data.executor.workers=3", "data.executor.tasks=3"))
    return tmp


def test_outputs_are_byte_for_byte_the_same_for_1_and_3_workers_quarantine_included(built):
    one, three = _without_times(built / "one"), _without_times(built / "three")
    assert one == three
    assert "quarantine.jsonl" in one and len(split_parts(built / "one", "big", "train")) >= 10


def test_parts_are_numbered_per_source_listed_in_the_manifest_with_counts_and_sha256(built):
    clean = built / "one"
    m = json.loads((clean / "manifest.json").read_text())
    parts = split_parts(clean, "big", "train")
    assert [p.name for p in parts] == [f"train-{i:05d}.jsonl" for i in range(len(parts))]
    assert m["parts"]["big"]["train"] == [f"big/{p.name}" for p in parts]
    for rel in m["parts"]["big"]["train"] + m["parts"]["big"]["heldout"]:
        out = m["outputs"][rel]
        assert out["docs"] == len((clean / rel).read_text().splitlines()) and len(out["sha256"]) == 64
    s = json.loads((clean / "stats.json").read_text())["sources"]["big"]
    assert sum(m["outputs"][r]["docs"] for r in m["parts"]["big"]["train"]) == s["train_docs"]


def test_a_corpus_in_parts_equals_the_in_process_corpus_in_one_part(built):
    build_clean_corpus(_cfg(built, "whole"))
    assert len(split_parts(built / "whole", "big", "train")) == 1
    for source, split in (("big", "train"), ("big", "heldout"), ("docs", "train"), ("gz", "train")):
        assert read_split_bytes(built / "whole", source, split) == read_split_bytes(built / "one", source, split)


def _tok_cfg(tmp: Path, clean: str, tokens: str, *overrides: str):
    return load_config(None, [f"workdir={tmp}", f"data.out={tmp / clean}", f"tokenize.out={tmp / tokens}",
                              f"tokenizer.out={tmp / 'tok'}", "tokenizer.vocab_size=300", *overrides])


@pytest.fixture(scope="module")
def tokenized(built):
    train_tokenizer(_tok_cfg(built, "one", "unused"))
    tasks = tokenize_corpus(_tok_cfg(built, "one", "tok_tasks", "tokenize.tasks=always", "data.executor.workers=2"))
    here = tokenize_corpus(_tok_cfg(built, "one", "tok_here", "tokenize.tasks=never"))
    return built, tasks, here


def test_tokenize_tasks_write_one_token_part_per_clean_part_identical_to_in_process(tokenized):
    tmp, tasks, here = tokenized
    assert tasks["backend"] == "local tasks" and here["backend"] in ("threads", "processes")
    n = len(split_parts(tmp / "one", "big", "train"))
    assert tasks["sources"]["big"]["train"]["parts"] == [f"train-{i:05d}" for i in range(n)]
    assert sorted(tasks["retokenized"]) == sorted(here["retokenized"])
    a, b = _files(tmp / "tok_tasks"), _files(tmp / "tok_here")
    bins = [k for k in a if k.endswith((".bin", ".idx.npy"))]
    assert len(bins) >= 2 * n and all(a[k] == b[k] for k in bins)
    assert tasks["sources"] == here["sources"] and not (tmp / "tok_tasks.work").exists()


def test_a_reader_sees_a_split_s_parts_as_one_token_stream(tokenized):
    tmp = tokenized[0]
    reader = ShardReader(tmp / "tok_tasks", "big", "train")
    assert len(reader.parts) >= 10
    flat = np.concatenate([p.data for p in reader.parts])
    assert reader.num_tokens == flat.size and reader.index[-1] == flat.size
    docs = [json.loads(line)["text"] for line in read_split_bytes(tmp / "one", "big", "train").splitlines()]
    assert reader.num_docs == len(docs)
    start = int(reader.parts[0].data.size) - 3  # a range across the first part boundary
    assert np.array_equal(reader.tokens(start, start + 10), flat[start:start + 10])
    for i in (0, len(docs) // 2, len(docs) - 1):
        a, b = reader.doc_bounds(i)
        assert np.array_equal(reader.doc(i, with_eos=True), flat[a:b]) and a == reader.index[i]


def test_a_rebuild_into_fewer_parts_leaves_no_stale_token_part(tokenized):
    tmp = tokenized[0]
    build_clean_corpus(_cfg(tmp, "one"))  # same data.out, one part per source now
    m = tokenize_corpus(_tok_cfg(tmp, "one", "tok_here", "tokenize.tasks=never"))
    assert m["sources"]["big"]["train"]["parts"] == ["train-00000"]
    assert sorted(p.name for p in (tmp / "tok_here" / "big").glob("train*.bin")) == ["train-00000.bin"]
    assert len(ShardReader(tmp / "tok_here", "big", "train").parts) == 1
