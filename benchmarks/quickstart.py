"""Benchmark: the quickstart end to end; prints wall time per stage, training tokens/s and MFU.

Usage: .venv/bin/python benchmarks/quickstart.py [--workdir DIR] [--set KEY=VALUE ...]

Runs `pretrainlab quickstart -c configs/quickstart.yaml` in a fresh work
directory and prints a markdown table for docs/BENCHMARKS.md. MFU on the CPU
is measured against the fp32 matmul rate measured at the start of training
(recorded in the run's meta.json), not a datasheet peak.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/pretrainlab-bench-quickstart")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    cmd = [sys.executable, "-m", "pretrainlab.cli", "quickstart", "-c", str(ROOT / "configs/quickstart.yaml"),
           "--workdir", str(workdir)]
    for o in args.overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    total = time.perf_counter() - t0
    run = workdir / "runs" / "quickstart"
    record = json.loads((run / "quickstart.json").read_text())
    meta = json.loads((run / "meta.json").read_text())
    tr = record["train"]
    print()
    print(f"machine: {platform.node()} ({platform.processor() or platform.machine()}), torch {meta['torch']}, "
          f"date {time.strftime('%Y-%m-%d')}")
    print("| stage | seconds |")
    print("|---|---:|")
    for stage, sec in record["timings_s"].items():
        print(f"| {stage} | {sec:.1f} |")
    print(f"| total (process wall time) | {total:.1f} |")
    print()
    print(f"params {meta['params']['total']:,}; flops/token {meta['flops_per_token'] / 1e6:.2f} M; "
          f"steps {tr['steps']}; tokens {tr['tokens']:,}")
    print(f"tokens/s (last log window) {tr['tokens_per_s']:,.0f}; MFU {100 * tr['mfu']:.1f}% of "
          f"{meta['peak_flops'] / 1e9:.0f} GFLOP/s ({meta['peak_flops_source']})")
    print(f"validation loss {tr['first_val_loss']:.4f} -> {tr['final_val_loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
