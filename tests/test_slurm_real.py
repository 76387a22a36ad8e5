"""A real one-node Slurm cluster on 127.0.0.1 (Debian's slurm-wlm + munge, started by
scripts/slurm_local.sh): `data build` as chained job arrays through real sbatch, and
scripts/slurm_train.sh as a 2-task gloo job. Skipped, with the reason, where the packages or
root are missing (`.ci/run` installs them)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_overrides
from test_data_executor import EXEC, _cfg, _raw, _same_corpus

from pretrainlab.data.pipeline import build_clean_corpus
from pretrainlab.fsio import iter_jsonl

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """SLURM_CONF of a running one-node cluster (partition debug, 2 CPUs), stopped after the module."""
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"real Slurm tests need Debian's slurm-wlm and munge ({', '.join(missing)} not found); "
                    "apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("real Slurm tests start slurmctld/slurmd and need root")
    d = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(ROOT / "scripts" / "slurm_local.sh"), "start", str(d)],
                             capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        pytest.skip(f"could not start a local Slurm cluster: {started.stderr.strip()[-500:]}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(d / "slurm.conf")
    yield d
    subprocess.run(["bash", str(ROOT / "scripts" / "slurm_local.sh"), "stop", str(d)], timeout=60)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def test_data_build_runs_as_chained_job_arrays_on_real_slurm_and_equals_the_in_process_corpus(slurm, tmp_path):
    _raw(tmp_path)
    build_clean_corpus(_cfg(tmp_path, "inproc"))
    summary = build_clean_corpus(_cfg(
        tmp_path, "slurm", *EXEC, "data.executor.kind=slurm", "data.executor.slurm.partition=debug",
        "data.executor.tasks=2", "data.executor.workers=2", "data.executor.dedup_buckets=1",
        "data.executor.slurm.poll_seconds=0.5", "data.executor.slurm.mem_per_cpu_gb=1", "data.executor.keep_work=true"))
    assert summary["totals"]["docs_out"] > 0
    _same_corpus(tmp_path / "inproc", tmp_path / "slurm")
    (work,) = (tmp_path / "slurm.work").iterdir()
    jobs = (work / "slurm_jobs.json").read_text()
    accounted = subprocess.run(["scontrol", "show", "job"], capture_output=True, text=True).stdout
    assert all(f"ArrayJobId={j} " in accounted for j in json.loads(jobs)["jobs"])  # real job arrays of this cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_slurm_train_script_runs_2_gloo_tasks_through_real_sbatch(slurm, tiny_data, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("# every setting comes from --set\n")
    run = tmp_path / "run"
    sets = tiny_overrides(tiny_data) + [f"run.dir={run}", "train.threads=1", "train.steps=4", "train.val_every=100",
                                        "train.parallel=ddp"]
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(_free_port())}
    out = subprocess.run(
        ["sbatch", "--parsable", "--wait", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0",
         "--time=00:10:00", str(ROOT / "scripts" / "slurm_train.sh"), str(config),
         *[a for s in sets for a in ("--set", s)]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("*.out"))
    assert out.returncode == 0, (out.stderr + logs)[-4000:]
    steps = [r["step"] for r in iter_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert steps and max(steps) == 4, logs[-4000:]
    assert json.loads((run / "meta.json").read_text())["world_size"] == 2  # two srun tasks, one gloo group


def test_slurm_train_script_checkpoints_on_the_batch_signal_and_requeues_itself(slurm, tiny_data, tmp_path):
    """What `#SBATCH --signal=B:USR1@300` does near the time limit, sent now with `scancel --signal=USR1 --batch`."""
    import time

    from pretrainlab.train import checkpoint as ckpt

    config = tmp_path / "train.yaml"
    config.write_text("# every setting comes from --set\n")
    run = tmp_path / "run"
    sets = tiny_overrides(tiny_data) + [f"run.dir={run}", "train.threads=1", "train.steps=400", "train.val_every=1000",
                                        "checkpoint.every=2", "train.parallel=ddp"]
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(_free_port())}
    job = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0",
         "--time=00:10:00", str(ROOT / "scripts" / "slurm_train.sh"), str(config),
         *[a for s in sets for a in ("--set", s)]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60).stdout.strip()
    try:
        deadline = time.time() + 300
        while not ((run / "metrics.jsonl").exists() and len(list(iter_jsonl(run / "metrics.jsonl"))) >= 4):
            assert time.time() < deadline, "the job never trained"
            time.sleep(0.2)
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)
        state = ""
        while "Restarts=1" not in state:  # the script requeued the job: it waits for its begin time again
            assert time.time() < deadline, state
            time.sleep(0.5)
            state = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        logs = "\n".join(p.read_text() for p in tmp_path.glob("*.out"))
        assert "checkpointed on a signal (exit 99): requeueing job" in logs, logs[-4000:]
        (stop,) = [e for e in iter_jsonl(run / "events.jsonl") if e["event"] == "interrupted"]
        assert stop["signal"] == "SIGUSR1" and ckpt.is_complete(ckpt.latest_checkpoint(run))
        assert ckpt.latest_checkpoint(run).name == f"step_{stop['step']:08d}" and stop["step"] < 400
    finally:
        subprocess.run(["scancel", job], timeout=30)
