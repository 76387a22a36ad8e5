"""Two `torchrun --nnodes 2` launchers (c10d rendezvous on 127.0.0.1) form one job; a killed "node" rejoins alone.

Each "node" is `scripts/torchrun_node.sh` (torchrun with one worker, elastic agent with
--max_restarts). Once a checkpoint exists one node is killed with SIGKILL (launcher and
worker) and started again with the same command. The other launcher is never relaunched:
its agent sees its worker fail on the broken collective, starts a new rendezvous round,
the restarted node joins it, and both fresh workers continue from the newest checkpoint
(`--resume auto`) to the losses of an uninterrupted run. With node A's agent hosting the
rendezvous store, B is the node lost; with the store in `scripts/rdzv_store.py`, A is.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_distributed import _free_port, _sets, losses, process_tree, run_one
from test_parallel_layouts import agree, metrics

from pretrainlab.fsio import iter_jsonl
from pretrainlab.train import checkpoint as ckpt

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "torchrun_node.sh"
STORE = SCRIPT.with_name("rdzv_store.py")
# dead nodes leave the rendezvous after 1 s x 3 missed heartbeats; a node that never comes back ends A after 120 s
RDZV_CONF = "keep_alive_interval=1,keep_alive_max_attempt=3,join_timeout=120"


def node(tiny_data, run, port: int, host: bool, job: str, log: Path) -> subprocess.Popen:
    """One "node": scripts/torchrun_node.sh (it execs torchrun), in its own session, output to ``log``."""
    cli = [a for o in _sets(tiny_data, run) for a in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable,
           "RDZV_HOST": str(int(host)), "RDZV_ID": job, "LOCAL_ADDR": "127.0.0.1", "MAX_RESTARTS": "2",
           "RDZV_CONF": RDZV_CONF}
    with open(log, "w") as out:  # a file, not a pipe: nobody reads a pipe while the node runs
        proc = subprocess.Popen(["bash", str(SCRIPT), f"127.0.0.1:{port}", "2", *cli], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
    proc.log = log
    return proc


def output(proc: subprocess.Popen) -> str:
    return proc.log.read_text(errors="replace")[-3000:]


def kill_tree(proc: subprocess.Popen) -> None:
    for pid in reversed(process_tree(proc.pid)):  # workers first, then the launcher
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def worker_rank(proc: subprocess.Popen) -> int:
    """The global rank of a node's (one) worker, from its environment (torchrun sets RANK for workers only)."""
    for pid in process_tree(proc.pid)[1:]:
        env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        if "RANK" in env:
            return int(env["RANK"])
    raise AssertionError(f"node {proc.pid} has no worker")


def wait_for(cond, nodes: list[subprocess.Popen], what: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while not cond():
        for p in nodes:
            assert p.poll() is None, f"a node exited before {what}: {output(p)}"
        assert time.time() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.05)


def resumes(run: Path) -> list[dict]:
    events = run / "events.jsonl"
    return [e for e in iter_jsonl(events) if e["event"] == "resume"] if events.exists() else []


def test_the_node_script_refuses_a_missing_endpoint_in_one_line():
    out = subprocess.run(["bash", str(SCRIPT), "2"], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1
    assert "usage: scripts/torchrun_node.sh HOST:PORT NNODES" in out.stderr


def test_the_store_script_refuses_a_bad_or_busy_port_in_one_line():
    bad = subprocess.run([sys.executable, str(STORE), "http"], capture_output=True, text=True, timeout=30, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "usage: python scripts/rdzv_store.py PORT" in bad.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        out = subprocess.run([sys.executable, str(STORE), str(busy.getsockname()[1])], capture_output=True, text=True,
                             timeout=60, check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "pick a free port" in out.stderr, out.stderr


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory) -> Path:
    """The uninterrupted one-process run."""
    run = tmp_path_factory.mktemp("single") / "run"
    run_one(tiny_data, run)
    return run


@pytest.fixture
def standalone_store(tmp_path):
    """scripts/rdzv_store.py on a free port: the rendezvous outlives every node."""
    port, log = _free_port(), tmp_path / "store.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(STORE), str(port)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    proc.log = log
    try:
        wait_for(lambda: "listening" in log.read_text(), [proc], "rendezvous store", 60)
        yield port
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0, output(proc)


@pytest.mark.slow
@pytest.mark.parametrize("store", ["hosted_by_a", "standalone"])
def test_a_node_killed_with_sigkill_rejoins_alone_and_the_job_resumes_exactly(tiny_data, tmp_path, store, request,
                                                                               reference):
    """hosted_by_a: node A's agent hosts the rendezvous and B is lost; standalone: scripts/rdzv_store.py
    hosts it and the node of rank 0 is lost."""
    standalone = store == "standalone"
    port = request.getfixturevalue("standalone_store") if standalone else _free_port()
    run, job = tmp_path / "run", f"rejoin{os.getpid()}{store}"
    a = node(tiny_data, run, port, not standalone, job, tmp_path / "a.log")
    nodes = [a]
    try:
        time.sleep(1.0)  # A hosts the rendezvous store (hosted_by_a)
        b = node(tiny_data, run, port, False, job, tmp_path / "b.log")
        nodes.append(b)
        trained = lambda: ckpt.latest_checkpoint(run) and (run / "metrics.jsonl").exists() and len(losses(run)) >= 3
        wait_for(trained, nodes, "a checkpoint", 240)
        if standalone:  # the node whose worker is rank 0, the one that writes logs and checkpoint markers
            lost, kept = (a, b) if worker_rank(a) == 0 else (b, a)
        else:  # A's agent hosts the store
            lost, kept = b, a
        workers_kept = set(process_tree(kept.pid)[1:])
        kill_tree(lost)
        lost.wait(timeout=30)
        killed_at = len(losses(run))
        assert killed_at < 10
        back = node(tiny_data, run, port, False, job, tmp_path / "back.log")  # the lost node only, at once
        nodes.append(back)
        wait_for(lambda: resumes(run), [kept, back], "resume after the rejoin", 180)
        workers_kept_after = set(process_tree(kept.pid)[1:])
        back.wait(timeout=300)
        kept.wait(timeout=120)
    finally:
        for p in nodes:
            if p.poll() is None:
                kill_tree(p)
                p.wait()
    assert kept.returncode == 0 and back.returncode == 0, output(kept) + output(back)
    # the surviving launcher ran on: its agent saw its worker fail and started a new one in the new round
    assert "exitcode: 1" in kept.log.read_text()
    assert workers_kept and workers_kept_after and not workers_kept & workers_kept_after
    assert agree(metrics(run), metrics(reference))
    resume = resumes(run)
    assert len(resume) == 1 and resume[0]["world_size"] == 2 and resume[0]["step"] <= killed_at
