"""Benchmark: what recording and checking sizes + CRC-32s costs a checkpoint save and a resume.

Usage:
  .venv/bin/python benchmarks/checkpoint_integrity.py [--params 50e6] [--repeats 3] [--dir DIR]

Writes a full-format checkpoint of a synthetic state (``--params`` fp32 weights plus AdamW's two
moments: 12 bytes per parameter) with ``checkpoint.save_checkpoint`` and reports the time the
CRC-32s took inside that save (computed while torch.save writes, timed by wrapping zlib.crc32),
then times the size-only ``verify`` that prune runs, the full ``verify`` that ``--resume auto``
runs before loading, and ``load_checkpoint``. Medians of ``--repeats``; the page cache is warm
(the checkpoint was just written), as on a resume right after a crash on the same node. Whole-save
times on a shared VM disk swing by +-40% with fsync writeback; the CRC share is the stable number.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import zlib
from pathlib import Path

import torch

from pretrainlab.train import checkpoint as ckpt
from pretrainlab.train import integrity


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class _ZlibTimed:
    def __init__(self, crc32):
        self.crc32 = crc32


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
    crc_s = [0.0]
    real_crc = integrity.zlib.crc32

    def timed_crc(data, value=0):
        t = time.perf_counter()
        out = real_crc(data, value)
        crc_s[0] += time.perf_counter() - t
        return out

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        run = Path(tmp)
        step = iter(range(1, 10**6))
        integrity.zlib = _ZlibTimed(timed_crc)
        save = _timed(lambda: ckpt.save_checkpoint(run, next(step), model, optim, {}, {"step": 0}), args.repeats)
        crc_in_save = crc_s[0] / args.repeats
        integrity.zlib = zlib
        path = ckpt.latest_checkpoint(run)
        size = sum(p.stat().st_size for p in path.iterdir())
        sizes = _timed(lambda: ckpt.verify(path, checksums=False), args.repeats)
        full = _timed(lambda: ckpt.verify(path), args.repeats)
        load = _timed(lambda: ckpt.load_checkpoint(path), args.repeats)
    gb = size / 1e9
    print(f"checkpoint {gb:.2f} GB ({n:,} params + AdamW), torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(f"save_checkpoint                : {save:6.2f} s, of which CRC-32 while writing {crc_in_save:.2f} s "
          f"({gb / max(crc_in_save, 1e-9):.1f} GB/s)")
    print(f"verify, sizes only (prune)     : {1e3 * sizes:6.2f} ms")
    print(f"verify, sizes + CRC-32 (resume): {full:6.2f} s ({gb / full:.2f} GB/s)   load_checkpoint: {load:6.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
