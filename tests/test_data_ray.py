"""`data build` and `data tokenize` on Ray (data.executor.kind=ray): a local Ray listens on 127.0.0.1
only, the corpus, its quarantine and the token shards are byte for byte the local executor's, a
build killed with -9 runs only its unfinished tasks again, and a Ray that cannot start or be reached
is one line. One local Ray serves the whole module (a start costs 5-15 s)."""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import os
import subprocess
import sys
import time

import psutil
import pytest

from test_data_executor import _cfg, _raw
from test_data_scale import _files, _tok_cfg, _without_times

from pretrainlab.config import load_config
from pretrainlab.data.pipeline import build_clean_corpus
from pretrainlab.tokenizer.shards import tokenize_corpus
from pretrainlab.tokenizer.train import train_tokenizer

pytestmark = [
    pytest.mark.slow,  # ~2-2.5 min at load 4-6: a Ray start, 2 Ray builds, a Ray tokenization, 4 CLI runs
    pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                       reason="ray is an optional extra (pip install 'pretrainlab[ray]'); the Ray tests need it"),
]
# ~30 KB units: 7 parts; each Ray task is an actor, a new process (~1 s of CPU to start)
UNITS = ("data.executor.min_input_mb=0", "data.executor.unit_mb=0.03")
RAY = ("data.executor.kind=ray", "data.executor.workers=2", "data.executor.dedup_buckets=1")
CLI = [sys.executable, "-c", "import sys; from pretrainlab.cli import main; sys.exit(main(sys.argv[1:]))"]


def _sets(*overrides: str) -> list[str]:
    return [a for s in overrides for a in ("--set", s)]


@pytest.fixture(scope="module")
def ray_local():
    """The local Ray that `data build` starts (dtsteps.ray_cluster), kept up for the module: the builds
    below find it initialized and use it."""
    from pretrainlab.data import dtsteps

    with dtsteps.ray_cluster(load_config(None, list(RAY)).data.executor):
        import ray

        yield ray


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_local):
    """The same input built on the local executor and on Ray (2 workers)."""
    tmp = tmp_path_factory.mktemp("ray")
    _raw(tmp)
    build_clean_corpus(_cfg(tmp, "local", *UNITS, "data.executor.workers=2", "data.executor.dedup_buckets=1"))
    build_clean_corpus(_cfg(tmp, "ray", *UNITS, *RAY))
    return tmp


def test_the_local_ray_listens_on_127_0_0_1_only_with_the_workers_cpus_and_no_usage_stats(ray_local):
    assert ray_local.util.get_node_ip_address() == "127.0.0.1"
    res = ray_local.cluster_resources()
    assert res["CPU"] == 2 and res["object_store_memory"] == 80 << 20
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
    listening = [ipaddress.ip_address(c.laddr.ip) for p in psutil.Process().children(recursive=True)
                 for c in _connections(p) if c.status == psutil.CONN_LISTEN]
    assert listening and all((getattr(a, "ipv4_mapped", None) or a).is_loopback for a in listening), listening


def _connections(proc: psutil.Process) -> list:
    try:
        return proc.net_connections(kind="inet")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def test_a_ray_build_is_byte_for_byte_the_local_executor_s_parts_manifest_and_quarantine(built):
    local, ray = _without_times(built / "local"), _without_times(built / "ray")
    assert local == ray
    assert "quarantine.jsonl" in ray and sum(k.startswith("big/train-") for k in ray) >= 4
    assert not (built / "ray.work").exists()  # the work folder goes once the corpus is in place


def test_tokenize_tasks_on_ray_write_the_token_shards_of_the_in_process_tokenizer(built):
    train_tokenizer(_tok_cfg(built, "ray", "unused"))
    on_ray = tokenize_corpus(_tok_cfg(built, "ray", "tok_ray", "tokenize.tasks=always", *RAY))
    here = tokenize_corpus(_tok_cfg(built, "ray", "tok_here", "tokenize.tasks=never"))
    assert on_ray["backend"] == "ray tasks" and on_ray["sources"] == here["sources"]
    a, b = _files(built / "tok_ray"), _files(built / "tok_here")
    bins = [k for k in a if k.endswith((".bin", ".idx.npy"))]
    assert len(bins) >= 2 * 8 and all(a[k] == b[k] for k in bins)
    assert not (built / "tok_ray.work").exists()


def test_a_ray_build_killed_with_9_runs_only_its_unfinished_tasks_again(built, ray_local):
    """The CLI connects to the module's Ray (RAY_ADDRESS) and is killed once a prefix task is done; the
    re-run leaves the finished tasks' completion markers untouched."""
    out = built / "killed"
    sets = [f"workdir={built}", f"data.out={out}", "data.min_chars=50", "data.quality.min_words=20",
            "data.max_doc_bytes=10000", "data.heldout_fraction=0.1", "data.pii.trend_batch_docs=40", *UNITS, *RAY,
            "data.executor.keep_work=true"]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    proc = subprocess.Popen([*CLI, "data", "build", *_sets(*sets)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    work = built / "killed.work"
    try:
        deadline = time.time() + 180
        while not any(work.glob("plan-*/completions/*")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, 9)
        assert proc.wait(timeout=30) == -9, proc.stderr.read().decode()
    finally:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(proc.pid, 9)
    done = {p: p.stat().st_mtime_ns for p in work.glob("plan-*/**/completions/*")}
    assert done and not out.exists()

    build_clean_corpus(load_config(None, sets))  # on the module's Ray, in this process
    assert _without_times(out) == _without_times(built / "local")
    after = list(work.glob("plan-*/**/completions/*"))
    assert len(after) > len(done) and all(p.stat().st_mtime_ns == t for p, t in done.items())  # not run again
    (plan,) = work.glob("plan-*")  # each task's log is copied into the work folder
    assert "Processing done for rank=0" in (plan / "phases" / "filter" / "logs" / "task_00000.log").read_text()


def test_a_ray_that_cannot_start_or_be_reached_is_one_line_and_no_hang(tmp_path):
    _raw(tmp_path)
    base = [f"workdir={tmp_path}", f"data.out={tmp_path / 'c'}", "data.executor.kind=ray"]
    (tmp_path / "afile").write_text("")
    cases = [({"RAY_TMPDIR": str(tmp_path / "afile" / "ray")}, [], "could not start a local Ray (NotADirectoryError"),
             ({}, ["data.executor.ray.address=127.0.0.1:9"], "nothing answers at the Ray address 127.0.0.1:9"),
             ({}, ["data.executor.ray.mem_per_cpu_gb=100000"], "a task asks for 100000 GB of memory")]  # would wait for ever
    for env, extra, message in cases:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | env
        t0 = time.time()
        r = subprocess.run([*CLI, "data", "build", *_sets(*base, *extra)], env=env, capture_output=True, text=True, check=False,
                           timeout=120)
        assert r.returncode == 2 and message in r.stderr + r.stdout and "Traceback" not in r.stderr, r.stderr
        assert time.time() - t0 < 60 and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_a_build_s_own_ray_gives_the_caller_its_signal_handlers_back():
    """ray.init installs a SIGTERM handler in the driver and leaves it after shutdown; a training job or a
    test runner that builds data in process must keep its own."""
    code = f"""
import signal
from pretrainlab.config import load_config
from pretrainlab.data import dtsteps
mine = lambda *a: None
signal.signal(signal.SIGTERM, mine)
with dtsteps.ray_cluster(load_config(None, {list(RAY)!r}).data.executor):
    inside = signal.getsignal(signal.SIGTERM)
print("RAY_HANDLER", inside is not mine, "RESTORED", signal.getsignal(signal.SIGTERM) is mine)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert "RAY_HANDLER True RESTORED True" in out.stdout, (out.stdout + out.stderr)[-2000:]
