"""Measured numbers from a finished (or running) training run: MFU, tokens/s, peak, devices.

Reads ``meta.json`` (peak FLOP/s over all ranks, world size, FLOPs/token) and
the train records of ``metrics.jsonl``. The first logged interval includes
warm-up (allocator, thread pools, compilation) so it is left out when later
intervals exist; the median of the rest is robust to a noisy machine.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from pretrainlab.errors import DataError
from pretrainlab.fsio import iter_jsonl, read_json


@dataclass(frozen=True)
class RunMeasurement:
    run_dir: str
    mfu: float
    tokens_per_s: float  # all ranks
    tokens_per_s_per_device: float
    world_size: int
    peak_flops_per_device: float
    peak_source: str
    flops_per_token: float
    device: str
    intervals: int

    def to_dict(self) -> dict:
        return asdict(self)


def measure_run(run_dir: str | Path) -> RunMeasurement:
    run_dir = Path(run_dir)
    meta_path, metrics_path = run_dir / "meta.json", run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        raise DataError(f"--from-run {run_dir}: not a directory; pass a run directory such as work/runs/quickstart")
    if not meta_path.exists() or not metrics_path.exists():
        raise DataError(
            f"--from-run {run_dir}: needs meta.json and metrics.jsonl (written by `pretrainlab train`); "
            "train first or pass the run directory"
        )
    meta = read_json(meta_path)
    records = [
        r for r in iter_jsonl(metrics_path)
        if r.get("kind") == "train" and _finite(r.get("mfu")) and _finite(r.get("tokens_per_s"))
        and r["tokens_per_s"] > 0 and not r.get("skipped")
    ]
    if not records:
        raise DataError(
            f"--from-run {run_dir}: metrics.jsonl has no train records with tokens_per_s and mfu; "
            "let the run log at least one step (train.log_every)"
        )
    steady = records[1:] if len(records) > 2 else records
    world = int(meta.get("world_size") or 1)
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in steady)
    peak_total = float(meta.get("peak_flops") or 0.0)
    if peak_total <= 0:
        raise DataError(f"--from-run {run_dir}: meta.json has no peak_flops; re-run training with this version")
    return RunMeasurement(
        run_dir=str(run_dir),
        mfu=statistics.median(r["mfu"] for r in steady),
        tokens_per_s=tokens_per_s,
        tokens_per_s_per_device=tokens_per_s / world,
        world_size=world,
        peak_flops_per_device=peak_total / world,
        peak_source=str(meta.get("peak_flops_source", "meta.json")),
        flops_per_token=float(meta.get("flops_per_token") or 0.0),
        device=str(meta.get("device", "?")),
        intervals=len(steady),
    )


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
