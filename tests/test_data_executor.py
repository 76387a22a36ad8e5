"""`data build` on datatrove executors: work units, byte ranges of large files, parts merged back
in read order (output identical to the in-process build), finished tasks skipped on a re-run,
the Slurm job script (run by fake sbatch/srun), and one-line errors for bad executor settings."""

from __future__ import annotations

import gzip
import json
import os
import random
import stat
import sys
from pathlib import Path

import pytest
import yaml

from pretrainlab.config import load_config
from pretrainlab.data import executor as dexec
from pretrainlab.data.corpusfiles import read_split_bytes
from pretrainlab.data.pipeline import build_clean_corpus
from pretrainlab.data.readers import read_source
from pretrainlab.data.sources import SourceSpec, scan_file
from pretrainlab.errors import ConfigError, DataError

APPROVAL = {"status": "approved", "by": "legal", "date": "2026-11-01"}
SPLITS = (("big", "train"), ("big", "heldout"), ("docs", "train"), ("gz", "train"))


def _prose(seed: int, n: int = 8) -> str:
    rng = random.Random(seed)
    words = lambda: " ".join("".join(rng.choice("abcdefghiklmnoprstuvwy") for _ in range(rng.randint(3, 8))) for _ in range(9))
    return " ".join(f"The {words()} of." for _ in range(n))


def _raw(tmp_path: Path) -> Path:
    """Three sources: a 'large' JSONL file (with bad lines, near-duplicates and PII), a text
    folder and a gzipped JSONL file."""
    raw = tmp_path / "raw"
    (raw / "docs").mkdir(parents=True)
    lines = []
    for i in range(240):
        if i % 50 == 7:
            lines.append(b"{not json\n")
        text = _prose(i % 90) + (" Mail bob@example.com." if i % 9 == 0 else "")
        rec = {"text": text} if i % 4 else {"id": f"d{i}", "text": text}  # some ids come from line numbers
        lines.append(json.dumps(rec).encode() + b"\n")
    lines.append(json.dumps({"id": "huge", "text": "x " * 6000}).encode() + b"\n")  # over max_doc_bytes
    (raw / "big.jsonl").write_bytes(b"".join(lines))
    for i in range(5):
        (raw / "docs" / f"f{i}.txt").write_text(_prose(1000 + i) + (" Call 13812345678." if i == 2 else ""))
    (raw / "docs" / "bin.dat").write_bytes(b"\x00\x01binary")
    (raw / "g.jsonl.gz").write_bytes(gzip.compress(b"".join(json.dumps({"text": _prose(2000 + i)}).encode() + b"\n" for i in range(20))))
    full = {"big": {"path": "big.jsonl", "pii_policy": "redact"}, "docs": {"path": "docs", "format": "text", "pii_policy": "drop"},
            "gz": {"path": "g.jsonl.gz"}}
    full = {n: {"license": "CC0-1.0", "approval": APPROVAL, **s} for n, s in full.items()}
    (raw / "sources.yaml").write_text(yaml.safe_dump({"sources": full}, sort_keys=False))
    return raw


def _cfg(tmp_path: Path, out: str, *overrides: str):
    return load_config(None, [f"workdir={tmp_path}", f"data.out={tmp_path / out}", "data.min_chars=50",
                              "data.quality.min_words=20", "data.max_doc_bytes=10000", "data.heldout_fraction=0.1",
                              "data.pii.trend_batch_docs=40", *overrides])


EXEC = ("data.executor.min_input_mb=0", "data.executor.unit_mb=0.004")  # ~4 KB units: the big file splits


def _same_corpus(a: Path, b: Path) -> None:
    """Same documents in the same order (the parts may be cut differently: unit_mb differs)."""
    for source, split in SPLITS:
        assert read_split_bytes(a, source, split) == read_split_bytes(b, source, split), (source, split)
    assert (a / "quarantine.jsonl").read_bytes() == (b / "quarantine.jsonl").read_bytes()
    sa, sb = (json.loads((d / "stats.json").read_text()) for d in (a, b))

    def strip(o):
        return {k: strip(v) for k, v in o.items() if k != "seconds"} if isinstance(o, dict) else o
    assert strip(sa["stages"]) == strip(sb["stages"]) and sa["sources"] == sb["sources"] and sa["totals"] == sb["totals"]
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["manifest_id"] == mb["manifest_id"]  # the executor changes where the work runs, not the dataset


def test_cut_points_are_line_starts_and_byte_ranges_read_exactly_the_file(tmp_path):
    raw = _raw(tmp_path)
    path = raw / "big.jsonl"
    data = path.read_bytes()
    cuts: list = []
    sha, lines, size = scan_file(path, 3000, cuts)
    assert (lines, size) == (data.count(b"\n"), len(data)) and len(cuts) >= 5
    for offset, line in cuts:
        assert data[offset - 1:offset] == b"\n" and data[:offset].count(b"\n") + 1 == line
    spec = SourceSpec("big", path, files=[path])
    whole = list(read_source(spec, 10_000))
    bounds = [(0, 1), *cuts, (size, None)]
    pieces = [r for (s, ln), (e, _) in zip(bounds, bounds[1:]) for r in read_source(spec, 10_000, [0], (s, e, ln))]
    assert pieces == whole  # same records, ids (from line numbers) and bad-record line numbers
    assert {r.code for r in whole if not hasattr(r, "text")} == {"invalid_json", "too_large"}


def test_units_group_small_files_split_large_ones_and_tasks_take_contiguous_runs(tmp_path):
    specs = [SourceSpec("a", tmp_path), SourceSpec("b", tmp_path)]
    sizes = {"a": [10, 10, 10, 500], "b": [30]}
    cuts = {("a", 3): [(200, 5), (400, 9)]}
    units = dexec.plan_units(specs, sizes, cuts, unit_bytes=25)
    assert [(u.source, u.files, u.byte_range) for u in units] == [
        ("a", (0, 1), None), ("a", (2,), None), ("a", (3,), (0, 200, 1)), ("a", (3,), (200, 400, 5)),
        ("a", (3,), (400, 500, 9)), ("b", (0,), None)]
    ranges = dexec.assign_tasks(units, 3)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(units)
    assert all(r[1] == n[0] for r, n in zip(ranges, ranges[1:]))  # contiguous, in read order
    assert max(sum(units[i].bytes for i in range(lo, hi)) for lo, hi in ranges) <= 300


def test_local_executor_gives_the_in_process_corpus_byte_for_byte(tmp_path):
    _raw(tmp_path)
    build_clean_corpus(_cfg(tmp_path, "inproc"))
    s = build_clean_corpus(_cfg(tmp_path, "tasks", *EXEC, "data.executor.workers=2", "data.executor.keep_work=true"))
    _same_corpus(tmp_path / "inproc", tmp_path / "tasks")
    assert s["totals"]["bad_records"] == 7  # 5 invalid JSON lines, 1 line over max_doc_bytes, 1 binary file
    assert s["sources"]["docs"]["removed"] == {"binary_file": 1, "pii": 1}
    (work,) = (tmp_path / "tasks.work").iterdir()
    pii = json.loads((tmp_path / "tasks" / "stats.json").read_text())["stages"]["pii"]
    batches = pii["extra"]["batches"]  # trend windows of 40 documents in read order, counted in the main process
    assert sum(b["docs"] for b in batches) == pii["docs_in"] and [b["batch"] for b in batches] == list(range(7))
    plan = dexec.load_plan(work)
    assert len(plan.ranges) >= 8 and sum(u.byte_range is not None for u in plan.units) >= 5  # big.jsonl was split
    assert sorted(os.listdir(work / "completions")) == [f"{r:05d}" for r in range(len(plan.ranges))]
    assert len(os.listdir(work / "parts")) == len(plan.ranges)


def _two_builds(tmp_path: Path, sources: dict, stages: str) -> dict:
    """The same input built in-process and on 2 local workers: same corpus and quarantine, byte for byte."""
    full = {n: {"license": "CC0-1.0", "approval": APPROVAL, **s} for n, s in sources.items()}
    (tmp_path / "raw" / "sources.yaml").write_text(yaml.safe_dump({"sources": full}))
    build_clean_corpus(_cfg(tmp_path, "inproc", stages))
    summary = build_clean_corpus(_cfg(tmp_path, "tasks", stages, *EXEC, "data.executor.workers=2", "data.executor.keep_work=true"))
    for n in sources:
        assert read_split_bytes(tmp_path / "inproc", n, "train") == read_split_bytes(tmp_path / "tasks", n, "train"), n
    assert (tmp_path / "inproc" / "quarantine.jsonl").read_bytes() == (tmp_path / "tasks" / "quarantine.jsonl").read_bytes()
    return summary


def test_the_quarantine_is_identical_for_a_document_a_stage_changes_and_then_rejects(tmp_path):
    (tmp_path / "raw").mkdir()
    menu = "\n".join(f"home about contact item {i}" for i in range(60))  # no terminal punctuation: dropped
    trimmed = f"{_prose(1, 1)}\n{menu}"  # c4_lines drops the menu, then one sentence < c4_min_sentences: rejected
    recs = [{"id": f"p{i}", "text": _prose(i)} for i in range(40)]
    recs[10] = {"id": "trimmed", "text": trimmed}
    (tmp_path / "raw" / "a.jsonl").write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in recs))
    _two_builds(tmp_path, {"a": {"path": "a.jsonl"}}, "data.stages=[normalize, length_filter, c4_lines, exact_dedup]")
    q = {r["id"]: r for r in map(json.loads, (tmp_path / "tasks" / "quarantine.jsonl").read_text().splitlines())}
    assert q["trimmed"]["code"] == "c4_too_few_sentences" and q["trimmed"]["chars"] == len(trimmed)
    assert q["trimmed"]["preview"] == trimmed[:200]  # the document as it entered the stage


def test_tasks_read_unparsable_and_mislabelled_input_as_the_in_process_build_does(tmp_path):
    """A line nested past the recursion limit, a byte-order mark, a '.gz' file that is plain JSONL
    (split into byte ranges) and a '.jsonl' file that is gzip."""
    raw = tmp_path / "raw"
    raw.mkdir()
    recs = [json.dumps({"id": f"p{i}", "text": _prose(i)}).encode() + b"\n" for i in range(60)]
    recs[30] = b'{"text": ' + b"[" * 1000 + b"]" * 1000 + b"}\n"
    (raw / "plain.jsonl.gz").write_bytes(b"\xef\xbb\xbf" + b"".join(recs))
    (raw / "packed.jsonl").write_bytes(gzip.compress(b"".join(recs[40:])))
    s = _two_builds(tmp_path, {"plain": {"path": "plain.jsonl.gz"}, "packed": {"path": "packed.jsonl"}},
                    "data.stages=[normalize, length_filter, exact_dedup]")
    (work,) = (tmp_path / "tasks.work").iterdir()
    assert sum(u.byte_range is not None for u in dexec.load_plan(work).units) >= 2  # the '.gz' plain file was split
    q = [json.loads(line) for line in (tmp_path / "tasks" / "quarantine.jsonl").read_text().splitlines()]
    assert [(r["id"], r["code"]) for r in q if r["stage"] == "read"] == [("plain:line31", "too_deep")]
    assert s["sources"]["plain"]["docs_in"] == 60 and s["sources"]["packed"]["docs_in"] == 20  # p0 kept despite the BOM
    assert b'"p0"' in read_split_bytes(tmp_path / "tasks", "plain", "train")


def test_work_folder_is_removed_after_a_successful_build_and_fewer_tasks_than_units_work(tmp_path):
    _raw(tmp_path)
    build_clean_corpus(_cfg(tmp_path, "inproc"))
    build_clean_corpus(_cfg(tmp_path, "three", *EXEC, "data.executor.tasks=3", "data.executor.workers=1"))
    _same_corpus(tmp_path / "inproc", tmp_path / "three")
    assert not (tmp_path / "three.work").exists()


def test_a_failed_task_is_the_only_one_run_again(tmp_path, monkeypatch):
    _raw(tmp_path)
    build_clean_corpus(_cfg(tmp_path, "inproc"))
    cfg = _cfg(tmp_path, "tasks", *EXEC, "data.executor.tasks=4", "data.executor.workers=1")
    real, ran = dexec.run_task, []

    def crash_on_last(work_dir, rank):
        if rank == 3:
            raise OSError("disk on fire")
        ran.append(rank)
        return real(work_dir, rank)

    monkeypatch.setattr(dexec, "run_task", crash_on_last)
    with pytest.raises(DataError, match=r"1 of 4 data tasks did not finish \(first error: OSError: disk on fire\).*"
                                        r"task_00003\.log; re-run"):
        build_clean_corpus(cfg)
    assert ran == [0, 1, 2] and not (tmp_path / "tasks").exists()  # nothing half-built is left as the corpus
    (work,) = (tmp_path / "tasks.work").iterdir()
    assert "disk on fire" in (work / "logs" / "task_00003.log").read_text()

    def record(work_dir, rank):
        ran.append(rank)
        return real(work_dir, rank)

    ran.clear()
    (work / "parts" / "00001.pkl").unlink()  # a finished task whose part was lost runs again too
    monkeypatch.setattr(dexec, "run_task", record)
    build_clean_corpus(cfg)
    assert ran == [1, 3]  # tasks 0 and 2 were finished: datatrove's completion markers skip them
    _same_corpus(tmp_path / "inproc", tmp_path / "tasks")


KILLER = """
import os, signal, sys
from pretrainlab.data import executor
real, seen = executor.run_stages, [0]

def run_stages(*args):  # kill -9 the whole build in the middle of a task
    seen[0] += 1
    if seen[0] == int(os.environ["KILL_AT_DOC"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args)

executor.run_stages = run_stages
from pretrainlab.cli import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_after_kill_9_mid_task_a_rerun_runs_only_the_unfinished_tasks(tmp_path, monkeypatch):
    import subprocess


    _raw(tmp_path)
    build_clean_corpus(_cfg(tmp_path, "inproc"))
    sets = [f"workdir={tmp_path}", f"data.out={tmp_path / 'tasks'}", "data.min_chars=50", "data.quality.min_words=20",
            "data.max_doc_bytes=10000", "data.heldout_fraction=0.1", "data.pii.trend_batch_docs=40", *EXEC,
            "data.executor.workers=1"]
    cmd = [sys.executable, "-c", KILLER, "data", "build", *[a for s in sets for a in ("--set", s)]]
    # Own session: the killed build's orphaned helper (datatrove's multiprocess Manager) is killed with it below.
    proc = subprocess.Popen(cmd, env={**os.environ, "KILL_AT_DOC": "150"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert proc.wait(timeout=120) == -9
    finally:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
    (work,) = (tmp_path / "tasks.work").iterdir()
    plan = dexec.load_plan(work)
    finished = {int(n) for n in os.listdir(work / "completions")}
    assert 0 < len(finished) < len(plan.ranges) and not (tmp_path / "tasks").exists()

    real, ran = dexec.run_task, []
    monkeypatch.setattr(dexec, "run_task", lambda work_dir, rank: ran.append(rank) or real(work_dir, rank))
    build_clean_corpus(load_config(None, sets))
    assert sorted(ran) == sorted(set(range(len(plan.ranges))) - finished)
    _same_corpus(tmp_path / "inproc", tmp_path / "tasks")


def test_a_changed_plan_starts_over_in_a_fresh_work_folder(tmp_path, monkeypatch):
    _raw(tmp_path)
    monkeypatch.setattr(dexec, "run_task", lambda work_dir, rank: (_ for _ in ()).throw(OSError("stop")))
    with pytest.raises(DataError):
        build_clean_corpus(_cfg(tmp_path, "c", *EXEC, "data.executor.tasks=4", "data.executor.workers=1"))
    (old,) = (tmp_path / "c.work").iterdir()
    monkeypatch.undo()
    build_clean_corpus(_cfg(tmp_path, "c", *EXEC, "data.executor.tasks=5", "data.executor.workers=1",
                            "data.executor.keep_work=true"))
    (new,) = (tmp_path / "c.work").iterdir()
    assert new != old  # the old plan's parts could never be used again


# --------------------------------------------------------------------------- Slurm

FAKE_SBATCH = r"""#!{python}
# Stands in for Slurm: runs every array task of the submitted script, in order, like a tiny cluster.
import os, re, subprocess, sys
script = sys.argv[-1]
text = open(script).read()
open(os.environ["FAKE_SLURM_LOG"], "a").write("ARGS " + " ".join(sys.argv[1:-1]) + "\n" + text + "\n=====\n")
m = re.search(r"^#SBATCH --array=(\d+)-(\d+)", text, re.M)
offset = next((a.split("RUN_OFFSET=")[1] for a in sys.argv if "RUN_OFFSET=" in a), "0")
for i in range(int(m.group(1)), int(m.group(2)) + 1) if m else [0]:
    env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(i), SLURM_NODELIST="localhost", RUN_OFFSET=offset, SLURM_JOB_ID="4242")
    subprocess.run(["bash", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print("Submitted batch job 4242")
"""
FAKE_SRUN = """#!/bin/bash
# srun [options] COMMAND...: run COMMAND
while [[ "$1" == -* ]]; do case "$1" in -n|-N) shift 2;; *) shift;; esac; done
exec "$@"
"""


def _fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {"sbatch": FAKE_SBATCH.format(python=sys.executable), "srun": FAKE_SRUN,
               "scontrol": "#!/bin/bash\necho localhost\n", "squeue": "#!/bin/bash\nexit 0\n"}
    for name, body in scripts.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755 | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_LOG", str(tmp_path / "sbatch.log"))
    return tmp_path / "sbatch.log"


@pytest.mark.slow
def test_slurm_job_array_script_runs_the_tasks_and_the_build_merges_them(tmp_path, monkeypatch):
    log = _fake_slurm(tmp_path, monkeypatch)
    _raw(tmp_path)
    build_clean_corpus(_cfg(tmp_path, "inproc"))
    slurm = ["data.executor.kind=slurm", "data.executor.slurm.partition=cpu", "data.executor.slurm.time=01:30:00",
             "data.executor.tasks=3", "data.executor.workers=2", "data.executor.slurm.mem_per_cpu_gb=4",
             "data.executor.dedup_buckets=1",
             "data.executor.slurm.sbatch_args={account: lab}", "data.executor.slurm.poll_seconds=0.1"]
    build_clean_corpus(_cfg(tmp_path, "slurm", *EXEC, *slurm))
    _same_corpus(tmp_path / "inproc", tmp_path / "slurm")
    script = log.read_text().split("=====")[0]
    for line in ("#SBATCH --partition=cpu", "#SBATCH --time=01:30:00", "#SBATCH --array=0-2%2", "#SBATCH --mem-per-cpu=4G",
                 "#SBATCH --cpus-per-task=1", "#SBATCH --account=lab", "#SBATCH --job-name=pretrainlab-data",
                 f"source {Path(sys.prefix) / 'bin' / 'activate'}", "launch_pickled_pipeline "):
        assert line in script, line
    assert "RUN_OFFSET=0" in script.splitlines()[0]


@pytest.mark.slow
def test_slurm_without_waiting_submits_and_a_rerun_merges(tmp_path, monkeypatch):
    _fake_slurm(tmp_path, monkeypatch)
    _raw(tmp_path)
    cfg = _cfg(tmp_path, "slurm", *EXEC, "data.executor.kind=slurm", "data.executor.slurm.partition=cpu",
               "data.executor.tasks=2", "data.executor.dedup_buckets=1", "data.executor.slurm.wait=false")
    first = build_clean_corpus(cfg)
    assert first["submitted"] and not (tmp_path / "slurm").exists()
    second = build_clean_corpus(cfg)  # the (fake) job has finished: nothing is submitted again, the parts are merged
    assert second["totals"]["docs_out"] > 0 and (tmp_path / "slurm" / "manifest.json").is_file()
    # one job array per phase (prefix, exact, near-buckets, near-cluster, near-verify, filter), chained by
    # afterok dependencies and all submitted by the first build; the re-run submits nothing again
    log = (tmp_path / "sbatch.log").read_text()
    assert log.count("launch_pickled_pipeline") == 6 and log.count("RUN_OFFSET=0 --dependency=afterok:4242") == 5


# Ray: tests/test_data_ray.py (one local Ray for its module).


def test_bad_executor_settings_are_one_line_errors(tmp_path, monkeypatch):
    _raw(tmp_path)
    with pytest.raises(ConfigError, match="needs data.executor.slurm.partition"):
        build_clean_corpus(_cfg(tmp_path, "c", "data.executor.kind=slurm"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="`sbatch` not found on PATH"):
        build_clean_corpus(_cfg(tmp_path, "c", "data.executor.kind=slurm", "data.executor.slurm.partition=cpu"))
    monkeypatch.setattr(dexec.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"kind=ray needs the ray package: pip install 'pretrainlab\[ray\]'"):
        build_clean_corpus(_cfg(tmp_path, "c", "data.executor.kind=ray"))
    with pytest.raises(ConfigError, match="data.executor.kind"):
        _cfg(tmp_path, "c", "data.executor.kind=spark")
    assert not (tmp_path / "c").exists()
