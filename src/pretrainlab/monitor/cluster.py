"""Per-rank hardware metrics and step times as a trainer callback, gathered to rank 0; the straggler rule.

Each rank runs a ``HardwareSampler`` (monitor/hardware.py) on a background
thread and times its own steps:

- ``step_s``: wall time of the step (equal on all ranks: they wait for each other);
- ``local_s``: time from the step's start until the rank first waits for the
  others (data loading, the forwards, the backwards of all micro-batches but the
  last; on CUDA timed with events on the GPU stream, so it is GPU time); this is
  what tells a slow rank apart, and what the straggler rule compares;
- ``data_wait_s``: time spent drawing batches from the loader.

At log steps (the trainer's ``log_every``) one ``all_gather`` collects every
rank's window means; rank 0 adds them to the train record as
``hw/rank{r}/{field}`` (so they reach metrics.jsonl, every tracker and the
Prometheus exporter) and runs ``StragglerRule`` on ``local_s``: a straggler is an
alert and a ``straggler`` event naming its rank and host. The ranks' host names
are gathered once and logged as a ``{"kind": "ranks", "hosts": [...]}`` record.
"""

from __future__ import annotations

import math
import socket
import time
from typing import TYPE_CHECKING

import torch

from pretrainlab.config import GuardConfig, HardwareConfig
from pretrainlab.monitor.alerts import AlertManager
from pretrainlab.monitor.hardware import FIELDS, RANK_FIELDS, TIMING_FIELDS, HardwareSampler
from pretrainlab.monitor.straggler import StragglerRule
from pretrainlab.train.callbacks import Callback

if TYPE_CHECKING:
    from pretrainlab.train.context import TrainContext


def rank_key(rank: int, name: str) -> str:
    return f"hw/rank{rank}/{name}"


class ClusterMonitor(Callback):
    def __init__(self, cfg: HardwareConfig, guard: GuardConfig, alerts: AlertManager | None = None):
        self.cfg = cfg
        self.rule = (StragglerRule(guard.straggler_factor, guard.straggler_steps)
                     if guard.enabled and guard.straggler_action != "off" else None)
        self.alerts = alerts
        self.sampler: HardwareSampler | None = None
        self.hosts: list[str] = []
        self._sums = dict.fromkeys(TIMING_FIELDS, 0.0)
        self._steps = 0
        self._skip_next = True  # the first step after start also holds the step-0 validation: not a step time
        self._begin_t = 0.0
        self._begin_wait = 0.0
        self._ready_t: float | None = None
        self._micro = 0
        self._events: tuple | None = None  # CUDA (begin, ready) events of the step in progress

    # ----------------------------------------------------------------- lifecycle

    def on_train_start(self, ctx: "TrainContext") -> None:
        cuda = ctx.device.type == "cuda" and self.cfg.gpu
        index = (ctx.device.index if ctx.device.index is not None else torch.cuda.current_device()) if cuda else None
        self.sampler = HardwareSampler(self.cfg.interval_s, index).start()
        self.hosts = self._gather_hosts(ctx)
        if ctx.is_main and ctx.sinks is not None:
            ctx.sinks.log({"kind": "ranks", "step": ctx.step, "time": time.time(), "hosts": self.hosts})
        self._begin(ctx)

    def on_train_end(self, ctx: "TrainContext") -> None:
        if self.sampler is not None:
            self.sampler.stop()

    @staticmethod
    def _gather_hosts(ctx: "TrainContext") -> list[str]:
        host = socket.gethostname()
        if ctx.world <= 1:
            return [host]
        import torch.distributed as dist

        hosts: list = [None] * ctx.world
        dist.all_gather_object(hosts, host)
        return [str(h) for h in hosts]

    # ----------------------------------------------------------------- timing

    def _begin(self, ctx: "TrainContext") -> None:
        self._begin_t, self._begin_wait = time.perf_counter(), ctx.loader.wait_s
        self._ready_t, self._micro = None, 0
        if ctx.device.type == "cuda":
            begin = torch.cuda.Event(enable_timing=True)
            begin.record()
            self._events = (begin, None)

    def extra_losses(self, ctx: "TrainContext", batch, logits) -> dict:
        # Called after each micro-batch's forward: after the last one the backward is where DDP/FSDP first wait.
        self._micro += 1
        if self._micro == ctx.accum:
            self._ready_t = time.perf_counter()
            if self._events is not None:
                ready = torch.cuda.Event(enable_timing=True)
                ready.record()
                self._events = (self._events[0], ready)
        return {}

    def _local_seconds(self) -> float:
        if self._events is not None and self._events[1] is not None:
            begin, ready = self._events
            return begin.elapsed_time(ready) / 1000.0  # both complete: the step's loss was read back already
        return (self._ready_t - self._begin_t) if self._ready_t is not None else math.nan

    def on_step_end(self, ctx: "TrainContext", metrics: dict) -> None:
        if self._skip_next:
            self._skip_next = False
        else:
            self._sums["step_s"] += time.perf_counter() - self._begin_t
            self._sums["local_s"] += self._local_seconds()
            self._sums["data_wait_s"] += ctx.loader.wait_s - self._begin_wait
            self._steps += 1
        tc = ctx.cfg.train
        if ctx.step % tc.log_every == 0 or ctx.step == tc.steps:
            self._log(ctx, metrics)
        self._begin(ctx)  # a rollback skips on_step_boundary; the next step then starts here

    def on_step_boundary(self, ctx: "TrainContext", val) -> None:
        self._begin(ctx)  # after validation and checkpointing, which are not the step's own time

    # ----------------------------------------------------------------- log steps

    def _window(self) -> list[float]:
        n = self._steps
        timing = [self._sums[k] / n if n else math.nan for k in TIMING_FIELDS]
        self._sums = dict.fromkeys(TIMING_FIELDS, 0.0)
        self._steps = 0
        hw = self.sampler.snapshot() if self.sampler is not None else {}
        return timing + [hw.get(k, math.nan) for k in FIELDS]

    def _gather(self, ctx: "TrainContext", row: list[float]) -> list[list[float]]:
        if ctx.world <= 1:
            return [row]
        import torch.distributed as dist

        t = torch.tensor(row, dtype=torch.float64, device=ctx.device)
        rows = [torch.empty_like(t) for _ in range(ctx.world)]
        dist.all_gather(rows, t)
        return [r.tolist() for r in rows]

    def _log(self, ctx: "TrainContext", metrics: dict) -> None:
        rows = self._gather(ctx, self._window())
        if not ctx.is_main:
            return
        for rank, row in enumerate(rows):
            metrics.update({rank_key(rank, k): v for k, v in zip(RANK_FIELDS, row) if math.isfinite(v)})
        if self.rule is not None:
            local = [row[RANK_FIELDS.index("local_s")] for row in rows]
            for s in self.rule.update(local):
                self._report(ctx, s)

    def _report(self, ctx: "TrainContext", s) -> None:
        host = self.hosts[s.rank] if s.rank < len(self.hosts) else "?"
        msg = (f"rank {s.rank} on host {host} is a straggler: {s.seconds:.3g} s of local work per step, "
               f"{s.ratio:.2f}x the other ranks' median {s.median:.3g} s for {s.steps} log steps; check that "
               "host's GPU (throttling, ECC), its data loading and its neighbours")
        details = {"rank": s.rank, "host": host, "seconds": s.seconds, "median": s.median, "ratio": s.ratio}
        ctx.event("straggler", message=msg, **details)
        if self.alerts is not None:
            self.alerts.send("warning", "straggler", msg, ctx.step, **details)


def build_cluster_callbacks(ctx: "TrainContext") -> list[Callback]:
    """The hardware/straggler monitor when ``hardware.enabled`` (it must run last: see ``on_step_boundary``)."""
    cfg = ctx.cfg
    if not cfg.hardware.enabled:
        return []
    alerts = AlertManager(cfg.alerts, ctx.run_dir, ctx.run_dir.name, enabled=ctx.is_main)
    return [ClusterMonitor(cfg.hardware, cfg.guard, alerts)]
