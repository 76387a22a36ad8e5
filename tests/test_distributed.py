"""torchrun on the CPU (gloo, 2 processes): DDP and FSDP2 match one process; checkpoints reshard; kill -9 resumes exactly.

Launching torchrun costs seconds, so each 2-process run is made once per module
(``two_process``) and shared by the tests that compare against it.
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from pretrainlab.config import load_config
from pretrainlab.fsio import iter_jsonl
from pretrainlab.train import checkpoint as ckpt
from pretrainlab.recipes import train

STEPS = ("train.steps=10", "checkpoint.every=2", "checkpoint.keep_last=10", "checkpoint.keep_best=false")


def _sets(tiny_data, run_dir, *extra):
    return tiny_overrides(tiny_data) + [f"run.dir={run_dir}", "train.threads=1", "train.val_every=100", *STEPS, *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tiny_data, run_dir, *extra, nproc: int = 2) -> subprocess.Popen:
    """Start a torchrun training run of ``nproc`` processes (its own session, so the test can kill it)."""
    cli = ["-m", "pretrainlab.cli", "train"] + [a for o in _sets(tiny_data, run_dir, *extra) for a in ("--set", o)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(_free_port()), *cli, "--resume", "auto"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def run_two(tiny_data, run_dir, *extra, timeout=300, nproc: int = 2) -> list[float]:
    proc = launch(tiny_data, run_dir, *extra, nproc=nproc)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return losses(run_dir)


def run_one(tiny_data, run_dir, *extra) -> list[float]:
    train(load_config(None, _sets(tiny_data, run_dir, *extra)))
    return losses(run_dir)


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in iter_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 2e-4 * max(1.0, abs(x)) for x, y in zip(a, b))


def keep_up_to(src: Path, dst: Path, step: int) -> Path:
    """A copy of run ``src`` as it was when checkpoint ``step`` was its newest (later checkpoints dropped)."""
    shutil.copytree(src, dst)
    for s, path in ckpt.list_checkpoints(dst):
        if s > step:
            shutil.rmtree(path)
    return dst


@pytest.fixture(scope="module")
def one_process(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("one") / "run"
    return run, run_one(tiny_data, run, "checkpoint.format=sharded")


@pytest.fixture(scope="module", params=["ddp", "fsdp2"])
def two_process(request, tiny_data, tmp_path_factory):
    """An uninterrupted 2-process run (sharded checkpoints, the default under torchrun) and its losses."""
    run = tmp_path_factory.mktemp(request.param) / "run"
    return request.param, run, run_two(tiny_data, run, f"train.parallel={request.param}")


@pytest.mark.slow
def test_two_process_training_matches_one_process(two_process, one_process):
    parallel, run, two = two_process
    assert len(two) == 10 and close(two, one_process[1])
    assert all(ckpt.checkpoint_format(p) == "sharded" for _, p in ckpt.list_checkpoints(run))
    # export and eval load it in one process without a process group
    model, _, path = ckpt.load_model(run)
    reference, _, _ = ckpt.load_model(one_process[0])
    assert path.name == "step_00000010"
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


@pytest.mark.slow
def test_a_sharded_checkpoint_from_two_processes_resumes_on_one(two_process, one_process, tiny_data, tmp_path):
    parallel, run, two = two_process
    run = keep_up_to(run, tmp_path / "run", 4)
    merged = run_one(tiny_data, run, f"train.parallel={parallel}")
    assert merged[:4] == two[:4] and close(merged, one_process[1])  # steps 5-10 on one process
    resume = [r for r in iter_jsonl(run / "events.jsonl") if r["event"] == "resume"][-1]
    assert (resume["saved_world_size"], resume["world_size"], resume["format"]) == (2, 1, "sharded")


@pytest.mark.slow
def test_a_one_process_sharded_checkpoint_resumes_on_two_and_full_state_back_on_one(one_process, tiny_data, tmp_path):
    run, one = one_process
    run = keep_up_to(run, tmp_path / "run", 4)
    # 1 -> 2 processes (sharded load into FSDP2), continuing with full-state saves gathered on rank 0 ...
    merged = run_two(tiny_data, run, "train.parallel=fsdp2", "checkpoint.format=full")
    assert merged[:4] == one[:4] and close(merged, one)
    formats = {s: ckpt.checkpoint_format(p) for s, p in ckpt.list_checkpoints(run)}
    assert {s: f for s, f in formats.items() if s >= 4} == {4: "sharded", 6: "full", 8: "full", 10: "full"}
    # ... and 2 -> 1 process from such a full-state checkpoint
    run = keep_up_to(run, tmp_path / "back", 8)
    assert close(run_one(tiny_data, run, "train.parallel=fsdp2"), one)


def process_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def kill_at_random_moment(proc: subprocess.Popen, run: Path, seed: str, steps: int) -> int:
    """SIGKILL torchrun and its workers (a node dying) mid-run, once a checkpoint is complete.

    The moment is drawn from a seeded RNG: after a random number of logged steps
    (at least the first checkpoint's) plus a random fraction of a step, so it
    falls inside a step, a validation or a background save. Returns the logged steps.
    """
    rng = random.Random(seed)
    after_steps, extra_s = rng.randint(2, steps - 4), rng.uniform(0.0, 0.02)
    deadline = time.time() + 240
    while not (ckpt.latest_checkpoint(run) and (run / "metrics.jsonl").exists()
               and len(losses(run)) >= after_steps):
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.005)
    time.sleep(extra_s)
    for pid in reversed(process_tree(proc.pid)):  # workers first, then torchrun: nobody gets to react
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()
    leftovers = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("."))
    print(f"killed after {after_steps}+ steps and {extra_s * 1000:.0f} ms: {len(losses(run))} steps logged, "
          f"newest checkpoint {ckpt.latest_checkpoint(run).name}, unfinished saves {leftovers}")
    return len(losses(run))


@pytest.mark.slow
def test_kill_9_at_a_random_moment_then_resume_auto_is_exact(two_process, tiny_data, tmp_path):
    parallel, _, uninterrupted = two_process
    run = tmp_path / "run"
    extra = (f"train.parallel={parallel}", "checkpoint.async_save=true")
    logged = kill_at_random_moment(launch(tiny_data, run, *extra), run, seed=parallel, steps=10)
    assert 2 <= logged < 10, "the kill must land mid-run"
    assert not ckpt.is_complete(run / "checkpoints" / "step_00000010")
    resumed_from = ckpt.latest_checkpoint(run)

    assert run_two(tiny_data, run, *extra) == uninterrupted  # merged: steps up to the checkpoint + the resumed ones
    resume = [r for r in iter_jsonl(run / "events.jsonl") if r["event"] == "resume"]
    assert [r["checkpoint"] for r in resume] == [str(resumed_from)]


def stop_with(proc: subprocess.Popen, run: Path, sig: signal.Signals, after_steps: int, whole_group: bool) -> str:
    """Deliver ``sig`` once ``after_steps`` steps are logged: to every process (a terminal's Ctrl-C) or to the launcher."""
    deadline = time.time() + 240
    while not (ckpt.latest_checkpoint(run) and (run / "metrics.jsonl").exists() and len(losses(run)) >= after_steps):
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.005)
    if whole_group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    return proc.communicate(timeout=120)[0]


def interrupted_at(run: Path, out: str) -> dict:
    """The run's last `interrupted` event, checked against its metrics and checkpoints."""
    evs = [e for e in iter_jsonl(run / "events.jsonl") if e["event"] == "interrupted"]
    assert evs, out[-4000:]
    assert evs[-1]["step"] == len(losses(run)), "every rank stops after the step it last logged"
    assert ckpt.is_complete(run / "checkpoints" / f"step_{evs[-1]['step']:08d}")
    return evs[-1]


@pytest.mark.slow
def test_ctrl_c_then_sigterm_stop_every_rank_at_one_step_with_a_checkpoint_and_resume_exactly(two_process, tiny_data,
                                                                                               tmp_path):
    parallel, _, uninterrupted = two_process
    run, extra = tmp_path / "run", (f"train.parallel={parallel}",)
    # Ctrl-C in the terminal reaches torchrun and both workers (torchrun forwards it once more).
    out = stop_with(launch(tiny_data, run, *extra), run, signal.SIGINT, after_steps=3, whole_group=True)
    first = interrupted_at(run, out)
    assert first["signal"] == "SIGINT" and first["step"] < 8
    # SIGTERM to torchrun alone (kubelet, `kill PID`): it forwards it to the workers.
    out = stop_with(launch(tiny_data, run, *extra), run, signal.SIGTERM, first["step"] + 1, whole_group=False)
    second = interrupted_at(run, out)
    assert second["signal"] == "SIGTERM" and first["step"] < second["step"] < 10, out[-4000:]
    assert run_two(tiny_data, run, *extra) == uninterrupted


FAKE_SRUN = """#!{python}
# srun stand-in: SLURM_NTASKS copies of the command on this machine; forwards signals; exits with the highest code.
import os, signal, subprocess, sys
args = sys.argv[1:]
while args[0].startswith("-"):
    args.pop(0)
procs = [subprocess.Popen(args, env={{**os.environ, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)}})
         for i in range(int(os.environ["SLURM_NTASKS"]))]
def forward(sig, frame):
    for p in procs:
        p.send_signal(sig)
for s in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(s, forward)
sys.exit(max(c if c >= 0 else 128 - c for c in [p.wait() for p in procs]))
"""
FAKE_SCONTROL = '#!/bin/bash\nif [ "$1" = show ]; then echo 127.0.0.1; else echo "scontrol $*" >> "$FAKE_SLURM_LOG"; fi\n'


@pytest.mark.slow
def test_slurm_script_checkpoints_on_the_time_limit_signal_requeues_and_the_requeued_job_resumes_exactly(
        two_process, tiny_data, tmp_path):
    parallel, _, uninterrupted = two_process
    if parallel != "fsdp2":
        pytest.skip("one parallel mode is enough for the job script")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", FAKE_SRUN.format(python=sys.executable)), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    config = tmp_path / "train.yaml"
    config.write_text("# every setting comes from --set\n")
    run = tmp_path / "run"
    sets = [a for o in _sets(tiny_data, run, f"train.parallel={parallel}") for a in ("--set", o)]
    script = Path(__file__).resolve().parents[1] / "scripts" / "slurm_train.sh"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": sys.executable,
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node1", "SLURM_NTASKS": "2", "OMP_NUM_THREADS": "1",
           "MASTER_PORT": str(_free_port()), "FAKE_SLURM_LOG": str(tmp_path / "slurm.log")}

    def job() -> subprocess.Popen:
        return subprocess.Popen(["bash", str(script), str(config), *sets], cwd=tmp_path, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    first = job()
    out = stop_with(first, run, signal.SIGUSR1, after_steps=3, whole_group=False)  # --signal=B:USR1@300
    assert interrupted_at(run, out)["signal"] == "SIGUSR1" and first.returncode == 99, out[-4000:]
    assert "requeueing job 4242" in out and (tmp_path / "slurm.log").read_text() == "scontrol requeue 4242\n"
    env["MASTER_PORT"] = str(_free_port())
    requeued = job()
    out = requeued.communicate(timeout=300)[0]
    assert requeued.returncode == 0, out[-4000:]
    assert losses(run) == uninterrupted
    assert (tmp_path / "slurm.log").read_text() == "scontrol requeue 4242\n"  # not requeued again
