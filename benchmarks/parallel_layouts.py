"""Benchmark: per layout, how much of each rank's step time is the model's compute and how much is waiting
(communication, pipeline bubble); the pipeline bubble measured against the planner's (p-1)/m.

Usage:
  .venv/bin/python benchmarks/parallel_layouts.py [--steps 12] [--d-model 128] [--layers 4] [--procs 2] [--only pp2]

Every layout is a real `pretrainlab train` run under torchrun (gloo, one thread per
process) on a synthetic corpus, with the same model and global batch as a one-process
reference run (for pipeline layouts: one process with the pipeline's micro-batch size, since
CPU matmul efficiency depends on it). Step time = the median of global_batch_tokens /
tokens_per_s over steps 3..N. The reference does all the compute on one core (T1); a layout of n processes,
each on its own core, would ideally take T1/n, so per rank

  compute share = T1 / (n x T),   waiting share = 1 - compute share

where "waiting" is everything that is not the one-process compute: collectives and
point-to-point transfers, pipeline bubbles, and work a layout repeats (e.g. norms
replicated over tensor-parallel ranks). For pipeline layouts (p stages, m micro-batches)
the measured bubble is n x T / T1 - 1, next to ``plan.formulas.pipeline_bubble`` (p-1)/m
(which counts idle time only, not transfers). The machine has 2 cores shared with other
work: layouts of 4 processes are oversubscribed, so only 2-process layouts are compared
with the reference by default (``--procs 4`` times the others; their "per core" share,
T1 / (min(n, cores) x T), is the one that can reach 100% there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LAYOUTS = [  # (name, processes, --set overrides)
    ("dp2 (DDP)", 2, []),
    ("dp2 (FSDP2)", 2, ["train.parallel=fsdp2"]),
    ("tp2", 2, ["parallel.tp=2"]),
    ("pp2 1F1B m=2", 2, ["parallel.pp=2", "parallel.pipeline_microbatches=2"]),
    ("pp2 1F1B m=4", 2, ["parallel.pp=2", "parallel.pipeline_microbatches=4"]),
    ("pp2 1F1B m=8", 2, ["parallel.pp=2", "parallel.pipeline_microbatches=8"]),
    ("pp2 1F1B m=16", 2, ["parallel.pp=2", "parallel.pipeline_microbatches=16"]),
    ("pp2 interleaved m=4", 2, ["parallel.pp=2", "parallel.pipeline_microbatches=4",
                                "parallel.pipeline_schedule=Interleaved1F1B", "parallel.pipeline_stages_per_rank=2"]),
    ("tp2 x dp2", 4, ["parallel.tp=2"]),
    ("pp2 x dp2 m=4", 4, ["parallel.pp=2", "parallel.pipeline_microbatches=4"]),
    ("HSDP 2x2", 4, ["parallel.dp_replicate=2", "parallel.dp_shard=2"]),
]


def step_seconds(run: Path, tokens_per_step: int) -> float:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    times = [tokens_per_step / r["tokens_per_s"] for r in recs if r.get("kind") == "train" and r["step"] >= 3]
    return statistics.median(times)


def launch(workdir: Path, nproc: int, sets: list[str], port: int) -> None:
    cli = ["-m", "pretrainlab.cli", "train", "--resume", "never", *[a for s in sets for a in ("--set", s)]]
    cmd = [sys.executable, *cli] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port), *cli]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=workdir,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        raise SystemExit(f"{sets[-3:]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--procs", type=int, default=2, help="run only layouts of this many processes (0: all)")
    ap.add_argument("--only", default=None, help="run only layouts whose name contains this")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from fault_matrix import _free_port, build_data

    from pretrainlab.plan.formulas import pipeline_bubble

    tokens = 4096
    base = ["tokenizer.vocab_size=320", f"model.d_model={args.d_model}", f"model.n_layers={args.layers}",
            "model.n_heads=4", "model.n_kv_heads=2", "model.max_seq_len=64", "model.tie_embeddings=false",
            "train.seq_len=64", "train.micro_batch=2", f"train.global_batch_tokens={tokens}",
            f"train.steps={args.steps}", "train.log_every=1", "train.val_every=1000", "train.val_batches=1",
            "train.threads=1", "checkpoint.every=1000", "log.tensorboard=false", "log.peak_flops=1e11"]
    chosen = [x for x in LAYOUTS if (args.only is None or args.only in x[0]) and args.procs in (0, x[1])]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        build_data(workdir)
        launch(workdir, 1, [f"workdir={workdir}", *base, f"run.dir={workdir / 'one'}"], 0)
        t1 = step_seconds(workdir / "one", tokens)
        print(f"{'one process (reference)':<22} 1 proc  | step {1000 * t1:7.1f} ms", flush=True)
        rows = [{"layout": "one process", "processes": 1, "step_s": t1}]
        for i, (name, nproc, extra) in enumerate(chosen):
            run = workdir / f"run{i}"
            launch(workdir, nproc, [f"workdir={workdir}", *base, f"run.dir={run}", *extra], _free_port())
            t = step_seconds(run, tokens)
            ref = t1
            if name.startswith("pp2"):  # the reference runs the pipeline's micro-batch size (CPU matmuls scale with it)
                m, dp = int(name.split("m=")[1]), nproc // 2
                rows_per_micro = tokens // 64 // (m * dp)
                launch(workdir, 1, [f"workdir={workdir}", *base, f"run.dir={run}_ref",
                                    f"train.micro_batch={rows_per_micro}"], 0)
                ref = step_seconds(workdir / f"{run.name}_ref", tokens)
            cores = min(nproc, os.cpu_count() or 1)
            row = {"layout": name, "processes": nproc, "step_s": t, "reference_step_s": ref,
                   "compute_share": ref / (nproc * t), "compute_share_per_core": ref / (cores * t)}
            text = ""
            if name.startswith("pp2"):
                row["bubble_measured"], row["bubble_planner"] = nproc * t / ref - 1, pipeline_bubble(2, m)
                text = f" | bubble {row['bubble_measured']:.2f} (planner (p-1)/m {row['bubble_planner']:.2f})"
            rows.append(row)
            if cores < nproc:
                text += f" | per core ({cores} cores) {100 * row['compute_share_per_core']:5.1f}%"
            print(f"{name:<22} {nproc} procs | step {1000 * t:7.1f} ms | compute {100 * row['compute_share']:5.1f}% "
                  f"/ waiting {100 * (1 - row['compute_share']):5.1f}% of rank time{text}", flush=True)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
