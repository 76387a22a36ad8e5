"""Benchmark: how long a checkpoint save blocks the training loop, full-state vs sharded, sync vs async.

Usage:
  .venv/bin/python benchmarks/checkpoint_stall.py [--d-model 512 --layers 8] [--saves 5] [--rounds 3]
  torchrun --nproc_per_node=2 benchmarks/checkpoint_stall.py [--parallel fsdp2|ddp] ...   (gloo on CPU)

Four savers, exactly as the trainer calls them (``pretrainlab.train.checkpoint``):
full sync (gather to rank 0 + ``save_checkpoint``), full async (gather + ``AsyncCheckpointer``),
sharded sync (``dcp.save`` per rank) and sharded async (``dcp.async_save``). The stall of a
sync save is its whole duration; of an async save, the time in ``save()`` plus what is left of
the background copy after one real forward/backward (the loop waits before the optimizer step).
Savers alternate within each round (the machine is shared and noisy); medians over saves 2..N
of every round are reported, with ratios against the full synchronous save measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--saves", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parallel", choices=["fsdp2", "ddp"], default="fsdp2")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = ap.parse_args()

    import torch.distributed as dist

    from pretrainlab.config import ModelConfig, ProjectConfig
    from pretrainlab.model.transformer import Transformer
    from pretrainlab.train import checkpoint as ckpt
    from pretrainlab.train.mesh import resolve_dims
    from pretrainlab.train.parallel import full_state, init_distributed, sharded_state
    from pretrainlab.train.parallelize import parallelize

    torch.set_num_threads(args.threads)
    rank, world, local_rank = init_distributed()
    group = dist.new_group(backend="gloo") if world > 1 else None
    cfg = ProjectConfig.model_validate({"train": {"parallel": args.parallel}})
    mcfg = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers,
                       n_heads=max(1, args.d_model // 64), max_seq_len=args.seq)
    torch.manual_seed(0)
    raw = Transformer(mcfg)
    n_params = sum(p.numel() for p in raw.parameters())
    model, _ = parallelize(raw, cfg, resolve_dims(cfg, world), torch.device("cpu"), local_rank)
    opt = torch.optim.AdamW(raw.parameters(), lr=1e-4)
    x = torch.randint(3, args.vocab, (args.micro_batch, args.seq))
    model(x, x)[1].backward()
    opt.step()  # optimizer moments exist, as in any real checkpoint
    opt.zero_grad(set_to_none=True)

    def fwd_bwd() -> None:
        model(x, x)[1].backward()
        opt.zero_grad(set_to_none=True)

    def barrier() -> None:
        if world > 1:
            dist.barrier(group=group)

    savers = {
        "full sync": lambda d, i: _full_sync(ckpt, full_state, model, opt, d, i, rank),
        "full async": None,
        "sharded sync": lambda d, i: ckpt.save_sharded_checkpoint(d, i, sharded_state(model, opt), {}, {"step": i},
                                                                  rank=rank, group=group),
        "sharded async": None,
    }
    stalls: dict[str, list[float]] = {name: [] for name in savers}
    root = Path(args.dir or tempfile.mkdtemp(prefix="ckpt-stall-"))
    async_full = ckpt.AsyncCheckpointer()
    async_sharded = ckpt.ShardedAsyncCheckpointer(rank, group)
    for r in range(args.rounds):
        for name in savers:
            for i in range(args.saves):
                run_dir = root / f"r{r}-{name.replace(' ', '-')}"
                barrier()
                t = time.perf_counter()
                if name == "full async":
                    msd, osd = full_state(model, opt)
                    if rank == 0:
                        async_full.save(run_dir, i, msd, osd, {}, {"step": i})
                elif name == "sharded async":
                    async_sharded.save(run_dir, i, sharded_state(model, opt), {}, {"step": i})
                else:
                    savers[name](run_dir, i)
                blocked = time.perf_counter() - t
                if name.endswith("async"):
                    fwd_bwd()  # the next step's forward/backward runs while the copy proceeds
                    t = time.perf_counter()
                    (async_full if name == "full async" else async_sharded).wait_staged()
                    blocked += time.perf_counter() - t
                    (async_full if name == "full async" else async_sharded).wait()  # don't overlap the next save
                if i:  # the first save of a round allocates buffers
                    stalls[name].append(blocked)
                barrier()
    async_sharded.close()
    worst = _max_over_ranks(stalls, world, group)
    if rank == 0:
        print(f"world {world} ({args.parallel if world > 1 else 'one process'}), threads {args.threads}; "
              f"model {n_params / 1e6:.1f}M params ({12 * n_params / 1e6:.0f} MB with AdamW moments); "
              f"medians of {args.rounds} rounds x saves 2-{args.saves}, slowest rank")
        base = statistics.median(worst["full sync"])
        for name, values in worst.items():
            med = statistics.median(values)
            print(f"  {name:13s} blocks {1e3 * med:8.1f} ms  = {100 * med / base:6.1f}% of full sync")
        for fmt in ("full", "sharded"):
            s, a = statistics.median(worst[f"{fmt} sync"]), statistics.median(worst[f"{fmt} async"])
            print(f"  {fmt}: async stall = {100 * a / s:.1f}% of a synchronous {fmt} save")
    if args.dir is None and rank == 0:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    if world > 1:
        dist.destroy_process_group()
    return 0


def _full_sync(ckpt, full_state, model, opt, run_dir, step, rank):
    msd, osd = full_state(model, opt)  # collective: every rank takes part in the gather
    if rank == 0:
        ckpt.save_checkpoint(run_dir, step, msd, osd, {}, {"step": step})


def _max_over_ranks(stalls: dict[str, list[float]], world: int, group) -> dict[str, list[float]]:
    """Per save, the slowest rank's stall (the loop runs at the pace of the slowest rank)."""
    if world <= 1:
        return stalls
    import torch.distributed as dist

    out = {}
    for name, values in stalls.items():
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
        out[name] = t.tolist()
    return out


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
