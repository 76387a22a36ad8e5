"""Benchmark: what recording and checking sizes + CRC-32s costs a checkpoint save and a resume.

Usage:
  .venv/bin/python benchmarks/checkpoint_integrity.py [--params 50e6] [--repeats 3] [--dir DIR]

Writes a full-format checkpoint of a synthetic state (``--params`` fp32 weights plus AdamW's two
moments: 12 bytes per parameter) with ``checkpoint.save_checkpoint`` (CRC-32 computed while
writing), then times against it: a plain ``torch.save`` of the same state (no checksums), the
size-only ``verify`` that prune runs, the full ``verify`` that ``--resume auto`` runs before
loading, and ``load_checkpoint``. Medians of ``--repeats``; the page cache is warm (the
checkpoint was just written), as on a resume right after a crash on the same node.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pretrainlab.train import checkpoint as ckpt


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=50e6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = ap.parse_args()
    n = int(args.params)
    model = {"w": torch.randn(n)}
    optim = {"state": {0: {"exp_avg": torch.randn(n), "exp_avg_sq": torch.rand(n), "step": torch.tensor(1.0)}},
             "param_groups": [{"params": [0], "lr": 1e-3}]}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        run = Path(tmp)
        step = iter(range(1, 10**6))
        save = _timed(lambda: ckpt.save_checkpoint(run, next(step), model, optim, {}, {"step": 0}), args.repeats)
        path = ckpt.latest_checkpoint(run)
        size = sum(p.stat().st_size for p in path.iterdir())

        def plain():
            for name, obj in (("model.pt", model), ("optim.pt", optim)):
                with open(run / name, "wb") as fh:
                    torch.save(obj, fh)
                    fh.flush()
                    os.fsync(fh.fileno())

        plain_s = _timed(plain, args.repeats)
        sizes = _timed(lambda: ckpt.verify(path, checksums=False), args.repeats)
        full = _timed(lambda: ckpt.verify(path), args.repeats)
        load = _timed(lambda: ckpt.load_checkpoint(path), args.repeats)
    gb = size / 1e9
    print(f"checkpoint {gb:.2f} GB ({n:,} params + AdamW), torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(f"save with CRC-32 while writing : {save:6.2f} s   plain torch.save of the same: {plain_s:6.2f} s "
          f"(+{100 * (save / plain_s - 1):.0f}%)")
    print(f"verify, sizes only (prune)     : {1e3 * sizes:6.2f} ms")
    print(f"verify, sizes + CRC-32 (resume): {full:6.2f} s ({gb / full:.2f} GB/s)   load_checkpoint: {load:6.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
