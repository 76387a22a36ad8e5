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


KILLER = """
import importlib, os, signal, sys
module, name = os.environ["KILL_TARGET"].split(":")
mod = importlib.import_module(module)
real, seen = getattr(mod, name), [0]

def wrapper(*args, **kwargs):  # kill -9 the whole command when the target runs for the KILL_AT-th time
    seen[0] += 1
    if seen[0] == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

setattr(mod, name, wrapper)
from pretrainlab.cli import main
main(sys.argv[1:])
"""


def _kill_during(args: list[str], target: str, at: int) -> None:
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-c", KILLER, *args]
    # Own session: an orphaned helper of the killed command (datatrove's Manager) is killed with it.
    proc = subprocess.Popen(cmd, env={**os.environ, "KILL_TARGET": target, "KILL_AT": str(at)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert proc.wait(timeout=180) == -9
    finally:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass


PHASE_FUNCS = {"prefix": "pretrainlab.data.executor:run_task", "exact": "pretrainlab.data.dedupdist:exact_task",
               "near-buckets": "pretrainlab.data.dedupdist:near_bucket_task",
               "near-cluster": "pretrainlab.data.dedupdist:near_cluster_task",
               "near-verify": "pretrainlab.data.dedupdist:near_verify_task", "filter": "pretrainlab.data.pipeline:filter_task"}


@pytest.mark.parametrize("phase, at", [("exact", 2), ("near-cluster", 1), ("filter", 2)])
def test_kill_9_during_a_dedup_or_filter_phase_then_a_rerun_runs_only_its_unfinished_tasks(built, phase, at, monkeypatch):
    import importlib
    import os

    from pretrainlab.data import executor as dexec

    sets = [f"workdir={built}", f"data.out={built / phase}", "data.min_chars=50", "data.quality.min_words=20",
            "data.max_doc_bytes=10000", "data.heldout_fraction=0.1", "data.pii.trend_batch_docs=40", *EXEC,
            "data.executor.workers=1", "data.executor.tasks=3", "data.executor.dedup_buckets=3"]
    _kill_during(["data", "build", *[a for s in sets for a in ("--set", s)]], PHASE_FUNCS[phase], at)
    (work,) = (built / f"{phase}.work").iterdir()
    plan = dexec.load_plan(work)
    names = [n for n, _, _ in dexec.phases(plan)]
    done = {n: {int(x) for x in os.listdir(dexec.phase_dir(work, n) / "completions")}
            if (dexec.phase_dir(work, n) / "completions").is_dir() else set() for n in names}
    total = {n: len(mb) for n, _, mb in dexec.phases(plan)}
    before = names[: names.index(phase)]
    assert all(len(done[n]) == total[n] for n in before) and len(done[phase]) < total[phase]
    assert not (built / phase).exists()

    calls: dict[str, list] = {n: [] for n in names}
    for n, ref in PHASE_FUNCS.items():
        module, name = ref.split(":")
        mod = importlib.import_module(module)
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _n=n, _real=real, **k: calls[_n].append(a[1]) or _real(*a, **k))
    build_clean_corpus(load_config(None, sets))
    assert all(calls[n] == [] for n in before)  # finished phases are not run again
    assert sorted(calls[phase]) == sorted(set(range(total[phase])) - done[phase])
    assert _without_times(built / phase) == _without_times(built / "three")


def test_kill_9_during_tokenization_then_a_rerun_tokenizes_only_the_unfinished_parts(tokenized, monkeypatch):
    from pretrainlab.tokenizer import shards

    tmp = tokenized[0]
    sets = [f"workdir={tmp}", f"data.out={tmp / 'three'}", f"tokenize.out={tmp / 'tok_killed'}",
            f"tokenizer.out={tmp / 'tok'}", "tokenize.tasks=always", "data.executor.workers=1"]
    _kill_during(["data", "tokenize", *[a for s in sets for a in ("--set", s)]], "pretrainlab.tokenizer.shards:tokenize_task", 5)
    finished = len(list((tmp / "tok_killed").glob("*/*.json")))
    assert finished == 4 and not (tmp / "tok_killed" / "manifest.json").exists()
    ran = []
    real = shards.tokenize_task
    monkeypatch.setattr(shards, "tokenize_task", lambda w, r: ran.append(r) or real(w, r))
    m = tokenize_corpus(load_config(None, sets))
    a, b = _files(tmp / "tok_killed"), _files(tmp / "tok_tasks")
    n_parts = sum(k.endswith(".bin") for k in b)
    assert len(ran) == len(m["retokenized"]) == n_parts - 4  # the 4 parts done before the kill are not redone
    assert [k for k in a if k.endswith(".bin")] == [k for k in b if k.endswith(".bin")]
    assert all(a[k] == b[k] for k in a if k.endswith((".bin", ".idx.npy")))


def test_the_planner_extrapolates_data_build_hours_from_the_per_core_rate():
    from pretrainlab.plan.planner import make_plan

    cfg = load_config(None, ["model.vocab_size=32000", "plan.data_prep_tb=40", "plan.data_mb_per_core_s=2",
                             "plan.data_parallel_efficiency=0.5", "plan.data_nodes=[1, 10]", "plan.data_cores_per_node=50"])
    prep = make_plan(cfg)["io"]["data_prep"]
    # 40e6 MB / (2 MB/s * 0.5 efficiency * 50 cores) = 800,000 s on one node; 10 nodes: a tenth
    assert [r["cores"] for r in prep["rows"]] == [50, 500]
    assert [round(r["hours"], 3) for r in prep["rows"]] == [round(800_000 / 3600, 3), round(80_000 / 3600, 3)]


def test_the_training_loader_draws_the_same_batches_from_many_parts_as_from_one(tokenized):
    import torch

    from pretrainlab.train.loader import MixtureLoader

    tmp, tasks, _ = tokenized
    if not (tmp / "whole" / "manifest.json").is_file():
        build_clean_corpus(_cfg(tmp, "whole"))
    one = tokenize_corpus(_tok_cfg(tmp, "whole", "tok_whole", "tokenize.tasks=never"))
    assert one["sources"]["big"]["train"]["parts"] == ["train-00000"] and len(tasks["sources"]["big"]["train"]["parts"]) > 1
    loaders = [MixtureLoader(tmp / d, seq_len=32, micro_batch=4, seed=3, eos_id=one["eos_id"], pad_id=one["pad_id"])
               for d in ("tok_tasks", "tok_whole")]
    for _ in range(20):
        a, b = (ld.next_batch() for ld in loaders)
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)


def test_a_chain_of_near_duplicates_keeps_its_far_end_in_process_and_on_tasks_alike(tmp_path):
    """A ~ B and B ~ C but A !~ C: the one-stream rule drops B (matches kept A) and keeps C (its only
    match, B, was dropped); a union of candidate pairs would drop C too."""
    import random

    import yaml

    from pretrainlab.data.dedupdist import hasher_for
    from pretrainlab.data.minhash import exact_jaccard

    rng = random.Random(7)
    a = ["".join(rng.choice("abcdefghijklmnop") for _ in range(6)) for _ in range(200)]
    b = list(a)
    for i in (30, 90, 150):
        b[i] = "zzzz"
    c = list(b)
    for i in (60, 120, 180):
        c[i] = "yyyy"
    texts = {"A": " ".join(a), "B": " ".join(b), "C": " ".join(c)}
    h = hasher_for(load_config(None, []).data)
    sh = {k: np.unique(h.shingles(t)).astype(np.uint32) for k, t in texts.items()}
    assert exact_jaccard(sh["A"], sh["B"]) >= 0.8 and exact_jaccard(sh["B"], sh["C"]) >= 0.8
    assert exact_jaccard(sh["A"], sh["C"]) < 0.8
    raw = tmp_path / "raw"
    raw.mkdir()
    filler = [{"id": f"f{i}", "text": " ".join(rng.choice(a) + str(i) for _ in range(200))} for i in range(30)]
    recs = [{"id": "A", "text": texts["A"]}, *filler[:10], {"id": "B", "text": texts["B"]}, *filler[10:20],
            {"id": "C", "text": texts["C"]}, *filler[20:]]
    (raw / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    approval = {"status": "approved", "by": "legal", "date": "2026-11-01"}
    (raw / "sources.yaml").write_text(yaml.safe_dump({"sources": {"s": {"path": "s.jsonl", "license": "CC0-1.0",
                                                                        "approval": approval}}}))
    base = [f"workdir={tmp_path}", "data.stages=[normalize, exact_dedup, near_dedup]", "data.min_chars=10",
            "data.heldout_fraction=0"]
    build_clean_corpus(load_config(None, [*base, f"data.out={tmp_path / 'one'}"]))
    build_clean_corpus(load_config(None, [*base, f"data.out={tmp_path / 'tasks'}", "data.executor.min_input_mb=0",
                                          "data.executor.unit_mb=0.01", "data.executor.workers=2"]))
    for out in ("one", "tasks"):
        q = [json.loads(x) for x in (tmp_path / out / "quarantine.jsonl").read_text().splitlines()]
        assert [(r["id"], r["code"]) for r in q] == [("B", "near_duplicate")] and "of A " in q[0]["reason"]
        kept = {json.loads(x)["id"] for x in read_split_bytes(tmp_path / out, "s", "train").splitlines()}
        assert {"A", "C"} <= kept
    assert read_split_bytes(tmp_path / "one", "s", "train") == read_split_bytes(tmp_path / "tasks", "s", "train")
