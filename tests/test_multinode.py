"""Two `torchrun --nnodes 2` launchers (c10d rendezvous on 127.0.0.1) form one job; a killed "node" rejoins alone.

Each "node" is `scripts/torchrun_node.sh` (torchrun with one worker, elastic agent with
--max_restarts). Node A hosts the rendezvous store; node B is killed with SIGKILL
(launcher and worker) once a checkpoint exists and is started again with the same
command. Node A is never relaunched: its agent sees its worker fail on the broken
collective, starts a new rendezvous round, B joins it, and both fresh workers continue
from the newest checkpoint (`--resume auto`) to the losses of an uninterrupted run.
"""

from __future__ import annotations

import os
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


@pytest.mark.slow
def test_a_node_killed_with_sigkill_rejoins_alone_and_the_job_resumes_exactly(tiny_data, tmp_path):
    reference = tmp_path / "single"
    run_one(tiny_data, reference)
    run, port, job = tmp_path / "run", _free_port(), f"rejoin{os.getpid()}"
    a = node(tiny_data, run, port, True, job, tmp_path / "a.log")
    nodes = [a]
    try:
        time.sleep(1.0)  # A hosts the rendezvous store
        b = node(tiny_data, run, port, False, job, tmp_path / "b.log")
        nodes.append(b)
        trained = lambda: ckpt.latest_checkpoint(run) and (run / "metrics.jsonl").exists() and len(losses(run)) >= 3
        wait_for(trained, nodes, "a checkpoint", 240)
        workers_a = set(process_tree(a.pid)[1:])
        kill_tree(b)
        b.wait(timeout=30)
        killed_at = len(losses(run))
        assert killed_at < 10
        b = node(tiny_data, run, port, False, job, tmp_path / "b2.log")  # only B is started again, at once
        nodes.append(b)
        wait_for(lambda: resumes(run), [a, b], "resume after the rejoin", 180)
        workers_a_after = set(process_tree(a.pid)[1:])
        b.wait(timeout=300)
        a.wait(timeout=120)
    finally:
        for p in nodes:
            if p.poll() is None:
                kill_tree(p)
                p.wait()
    assert a.returncode == 0 and b.returncode == 0, output(a) + output(b)
    # A's launcher ran on; its agent saw its worker fail and started a new one in the new round
    assert "exitcode: 1" in a.log.read_text() and workers_a and workers_a_after and not workers_a & workers_a_after
    assert agree(metrics(run), metrics(reference))
    resume = resumes(run)
    assert len(resume) == 1 and resume[0]["world_size"] == 2 and resume[0]["step"] <= killed_at
