"""Benchmark: per layout, where a training step's time goes (compute vs waiting on communication) on the CPU,
and the pipeline bubble measured against the planner's (p-1)/m.

Usage:
  .venv/bin/python benchmarks/parallel_layouts.py [--steps 12] [--d-model 128] [--layers 4] [--procs 2] [--only pp2]

Each layout is a real `pretrainlab train` run under torchrun (gloo) on a synthetic corpus;
the worker wraps the run in ``torch.profiler`` (CPU activities) and sums, per rank, the
time of the step loop spent inside communication: gloo collectives, point-to-point
sends/receives and the waits on them (events named ``gloo:*``, ``c10d::*``,
``_c10d_functional::*``, ``record_param_comms`` on the training loop's thread, top-level
only, so nested events and gloo's own threads are not counted). The profiler slows every
op down, so the step times here are not throughput numbers; the shares are the point. Compute = step time - communication time. For pipeline layouts the
bubble is the idle share of a stage: (p x step time - sum of the stages' compute) over
the sum of the stages' compute, next to the planner's formula (p-1)/m
(``plan.formulas.pipeline_bubble``). Each process uses one thread; the machine has 2
cores, so layouts of 4 processes are oversubscribed and their waits include time spent
descheduled: compare layouts of the same process count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMM = ("gloo:", "c10d::", "_c10d_functional::", "record_param_comms", "nccl:")

LAYOUTS = [  # (name, processes, --set overrides)
    ("dp2 (DDP)", 2, []),
    ("dp2 (FSDP2)", 2, ["train.parallel=fsdp2"]),
    ("tp2", 2, ["parallel.tp=2"]),
    ("pp2 1F1B m=2", 2, ["parallel.pp=2", "parallel.pipeline_microbatches=2"]),
    ("pp2 1F1B m=4", 2, ["parallel.pp=2", "parallel.pipeline_microbatches=4"]),
    ("pp2 1F1B m=8", 2, ["parallel.pp=2", "parallel.pipeline_microbatches=8"]),
    ("pp2 interleaved m=4", 2, ["parallel.pp=2", "parallel.pipeline_microbatches=4",
                                "parallel.pipeline_schedule=Interleaved1F1B", "parallel.pipeline_stages_per_rank=2"]),
    ("tp2 x dp2", 4, ["parallel.tp=2"]),
    ("pp2 x dp2 m=4", 4, ["parallel.pp=2", "parallel.pipeline_microbatches=4"]),
]


def worker(out: Path, sets: list[str]) -> None:
    """Inside torchrun: one profiled training run; writes this rank's step-loop and communication times."""
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    from pretrainlab.config import load_config
    from pretrainlab.recipes import train

    cfg = load_config(None, sets)
    rank = int(os.environ.get("RANK", "0"))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        w0 = time.time()
        train(cfg, resume="never")
    loop_thread = max(Counter(e.thread for e in prof.events()).items(), key=lambda kv: kv[1])[0]
    steps = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] - w0 for r in steps if r.get("kind") == "train"]
    lo, hi = times[2], times[-1]  # steps 4..N: past warm-up, before the final validation and save
    comm, names = 0.0, Counter()
    for e in prof.events():
        # the training loop's thread, top level only: gloo's worker threads and nested events are not counted
        if e.thread == loop_thread and e.cpu_parent is None and e.name.startswith(COMM):
            start, end = e.time_range.start / 1e6, e.time_range.end / 1e6
            overlap = max(0.0, min(end, hi) - max(start, lo))
            comm += overlap
            names[e.name] += overlap
    (out / f"rank{rank}.json").write_text(json.dumps({"loop_s": hi - lo, "steps": len(times) - 3, "comm_s": comm,
                                                      "top_comm": names.most_common(4)}))


def run_layout(workdir: Path, name: str, nproc: int, extra: list[str], base: list[str], port: int) -> dict:
    out = Path(tempfile.mkdtemp(dir=workdir))
    sets = [f"workdir={workdir}", *base, f"run.dir={out / 'run'}", *extra]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port),
           __file__, "--worker", str(out), *sets]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
    loop = max(r["loop_s"] for r in ranks)
    comm = [r["comm_s"] for r in ranks]
    return {"layout": name, "processes": nproc, "step_s": loop / ranks[0]["steps"],
            "comm_wait_share": sum(comm) / sum(r["loop_s"] for r in ranks),
            "compute_s_per_rank": [r["loop_s"] - c for r, c in zip(ranks, comm)], "loop_s": loop,
            "top_comm_events": ranks[0]["top_comm"]}


def bubble(row: dict, p: int) -> float:
    """Idle share of a pipeline stage over its compute: (p x wall - sum of compute) / sum of compute."""
    busy = sum(row["compute_s_per_rank"][:p])
    return (p * row["loop_s"] - busy) / busy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--only", default=None, help="run only layouts whose name contains this")
    ap.add_argument("--procs", type=int, default=None, help="run only layouts of this many processes")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    args, rest = ap.parse_known_args()
    if args.worker:
        worker(Path(args.worker), rest)
        return 0
    sys.path.insert(0, str(Path(__file__).parent))
    from fault_matrix import _free_port, build_data

    from pretrainlab.plan.formulas import pipeline_bubble

    base = ["tokenizer.vocab_size=320", f"model.d_model={args.d_model}", f"model.n_layers={args.layers}",
            "model.n_heads=4", "model.n_kv_heads=2", "model.max_seq_len=64", "model.tie_embeddings=false",
            "train.seq_len=64", "train.micro_batch=2", "train.global_batch_tokens=2048", f"train.steps={args.steps}",
            "train.log_every=1", "train.val_every=1000", "train.val_batches=1", "train.threads=1",
            "checkpoint.every=1000", "log.tensorboard=false", "log.peak_flops=1e11"]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        build_data(workdir)
        rows = []
        chosen = [x for x in LAYOUTS if (args.only is None or args.only in x[0]) and args.procs in (None, x[1])]
        for name, nproc, extra in chosen:
            row = run_layout(workdir, name, nproc, extra, base, _free_port())
            if name.startswith("pp2"):
                m = int(name.split("m=")[1])
                row["bubble_measured"], row["bubble_planner"] = bubble(row, 2), pipeline_bubble(2, m)
            rows.append(row)
            extra_txt = (f" | bubble {row['bubble_measured']:.2f} (planner (p-1)/m {row['bubble_planner']:.2f})"
                         if "bubble_measured" in row else "")
            print(f"{name:<22} {nproc} procs | step {1000 * row['step_s']:6.1f} ms | comm wait "
                  f"{100 * row['comm_wait_share']:5.1f}% of rank time{extra_txt}", flush=True)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
