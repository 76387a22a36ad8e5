"""MoE monitoring as a trainer callback: routing health per layer, every step, and a collapse rule.

After each step's backward it reads the routing statistics the MoE layers
accumulated over the step's micro-batches (summed over ranks under torchrun) and
the router gradients, and adds to the metrics record (logged to metrics.jsonl and
TensorBoard):

- ``moe/layer{i}/tokens_per_expert`` (list), ``cv`` (std/mean of the load),
  ``max_load`` / ``min_load`` (relative to the mean), ``top_share``,
  ``drop_rate``, ``aux_loss``, ``z_loss``, ``logit_mean``, ``logit_var``,
  ``router_grad_norm`` (list, per expert; after gradient clipping) and its max;
- ``ce_loss`` (the loss without the auxiliary terms), ``moe/aux_loss``,
  ``moe/z_loss`` (means over layers), ``moe/drop_rate``, ``moe/cv_max``.

Routing collapse: a layer whose top ``top_fraction`` of experts receive more
than ``max_top_share`` of the tokens, or whose drop rate exceeds
``max_drop_rate``, for ``patience`` consecutive steps gives one
``moe_routing_collapse`` event and a warning alert (monitor/alerts.py); the
rule re-arms once the condition clears. TensorBoard also gets a per-layer
expert-load histogram at each log step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from pretrainlab.config import MoEMonitorConfig
from pretrainlab.model.moe import MoE, moe_layers
from pretrainlab.train.callbacks import Callback

if TYPE_CHECKING:
    from pretrainlab.train.trainer import TrainContext


def load_summary(tokens_per_expert: list[float], top_fraction: float = 0.1) -> dict[str, float]:
    """CV, max/min load relative to the mean, and the token share of the top experts."""
    t = torch.tensor(tokens_per_expert, dtype=torch.float64)
    total, mean = float(t.sum()), float(t.mean())
    if total <= 0:
        return {"cv": 0.0, "max_load": 0.0, "min_load": 0.0, "top_share": 0.0}
    n_top = max(1, math.ceil(top_fraction * t.numel()))
    return {
        "cv": float(t.std(unbiased=False)) / mean,
        "max_load": float(t.max()) / mean,
        "min_load": float(t.min()) / mean,
        "top_share": float(t.topk(n_top).values.sum()) / total,
    }


def collapse_reasons(summary: dict[str, float], drop_rate: float, cfg: MoEMonitorConfig) -> list[str]:
    """The collapse conditions a layer's step statistics meet (empty when healthy)."""
    reasons = []
    if summary["top_share"] > cfg.max_top_share:
        reasons.append("top_share")
    if drop_rate > cfg.max_drop_rate:
        reasons.append("drop_rate")
    return reasons


class MoEMonitor(Callback):
    def __init__(self, cfg: MoEMonitorConfig | None = None):
        self.cfg = cfg
        self.layers: list[tuple[int, MoE]] = []
        self.streak: dict[tuple[int, str], int] = {}
        self.firing: set[tuple[int, str]] = set()
        self.writer = None
        self.alerts = None

    def on_train_start(self, ctx: "TrainContext") -> None:
        self.cfg = self.cfg or ctx.cfg.moe_monitor
        self.layers = moe_layers(ctx.raw_model)
        for _, layer in self.layers:
            layer.pop_stats()  # drop anything accumulated before training (e.g. a warm-up forward)
        if ctx.is_main:
            from pretrainlab.monitor.alerts import AlertManager

            self.alerts = AlertManager(ctx.cfg.alerts, ctx.run_dir, ctx.run_dir.name)
            if ctx.cfg.log.tensorboard and self.cfg.histograms:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except Exception:  # TensorBoard missing: the scalar sink already warned
                    SummaryWriter = None
                if SummaryWriter is not None:
                    self.writer = SummaryWriter(log_dir=str(ctx.run_dir / "tb"), filename_suffix=".moe")

    def on_after_backward(self, ctx: "TrainContext", metrics: dict) -> None:
        if not self.layers or not isinstance(metrics.get("loss"), float):
            return  # a step read later (train/trainer.py read_metrics): the layers keep summing their statistics
        step = metrics["step"]
        moe_cfg = ctx.raw_model.cfg.moe
        per_layer = [self._layer_metrics(ctx, i, layer) for i, layer in self.layers]
        per_layer = [(i, m) for (i, _), m in zip(self.layers, per_layer) if m is not None]
        if not per_layer:
            return
        for i, m in per_layer:
            metrics.update({f"moe/layer{i}/{k}": v for k, v in m.items()})
        aux = sum(m["aux_loss"] for _, m in per_layer) / len(per_layer)
        z = sum(m["z_loss"] for _, m in per_layer) / len(per_layer)
        metrics["moe/aux_loss"] = aux
        metrics["moe/z_loss"] = z
        metrics["moe/drop_rate"] = max(m["drop_rate"] for _, m in per_layer)
        metrics["moe/cv_max"] = max(m["cv"] for _, m in per_layer)
        if isinstance(metrics.get("loss"), float):
            metrics["ce_loss"] = metrics["loss"] - moe_cfg.aux_loss_coef * aux - moe_cfg.z_loss_coef * z
        metrics["moe/collapsed_layers"] = self._collapse_rule(ctx, step, per_layer)
        last = step == ctx.cfg.train.steps
        if self.writer is not None and (step % ctx.cfg.train.log_every == 0 or last):
            for i, m in per_layer:
                self._histogram(f"moe/layer{i}/tokens_per_expert", m["tokens_per_expert"], step)

    def on_train_end(self, ctx: "TrainContext") -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def state_dict(self) -> dict:
        """The collapse rule's streaks, so a resumed run neither re-alerts nor forgets a building streak."""
        return {"streak": [[i, r, n] for (i, r), n in self.streak.items()], "firing": [[i, r] for i, r in self.firing]}

    def load_state_dict(self, state: dict) -> None:
        self.streak = {(int(i), str(r)): int(n) for i, r, n in state.get("streak", [])}
        self.firing = {(int(i), str(r)) for i, r in state.get("firing", [])}

    # ---- pieces

    def _layer_metrics(self, ctx: "TrainContext", index: int, layer: MoE) -> dict | None:
        stats = layer.pop_stats()
        if not stats:
            return None
        e = layer.num_experts
        scalars = torch.stack([stats[k].reshape(()) for k in
                               ("kept", "assignments", "logit_sum", "logit_sq_sum", "logit_count", "aux", "z", "calls")])
        packed = torch.cat([stats["demand"].reshape(-1).float(), scalars.float()])
        if ctx.world > 1:
            import torch.distributed as dist

            dist.all_reduce(packed)
        values = packed.tolist()
        demand, (kept, assigned, lsum, lsq, lcount, aux, z, calls) = values[:e], values[e:]
        grad = layer.router.weight.grad
        if grad is not None and hasattr(grad, "full_tensor"):  # FSDP2 shards the router: gather (collective)
            grad = grad.full_tensor()
        grad_norms = grad.float().norm(dim=1).tolist() if grad is not None else [0.0] * e
        mean = lsum / max(lcount, 1.0)
        out = {
            "tokens_per_expert": demand,
            **load_summary(demand, self.cfg.top_fraction),
            "drop_rate": 1.0 - kept / max(assigned, 1.0),
            "aux_loss": aux / max(calls, 1.0),
            "z_loss": z / max(calls, 1.0),
            "logit_mean": mean,
            "logit_var": max(lsq / max(lcount, 1.0) - mean * mean, 0.0),
            "router_grad_norm": grad_norms,
            "router_grad_norm_max": max(grad_norms),
        }
        return out

    def _collapse_rule(self, ctx: "TrainContext", step: int, per_layer: list[tuple[int, dict]]) -> int:
        flagged = 0
        for i, m in per_layer:
            summary = {k: m[k] for k in ("cv", "max_load", "min_load", "top_share")}
            reasons = collapse_reasons(summary, m["drop_rate"], self.cfg) if step > self.cfg.after_step else []
            flagged += bool(reasons)
            for reason in ("top_share", "drop_rate"):
                key = (i, reason)
                if reason not in reasons:
                    self.streak.pop(key, None)
                    self.firing.discard(key)
                    continue
                self.streak[key] = self.streak.get(key, 0) + 1
                if self.streak[key] >= self.cfg.patience and key not in self.firing:
                    self.firing.add(key)
                    self._fire(ctx, step, i, reason, m)
        return flagged

    def _fire(self, ctx: "TrainContext", step: int, layer: int, reason: str, m: dict) -> None:
        n_top = max(1, math.ceil(self.cfg.top_fraction * len(m["tokens_per_expert"])))
        if reason == "top_share":
            message = (f"MoE routing collapse in layer {layer}: the top {n_top} of {len(m['tokens_per_expert'])} experts "
                       f"got {100 * m['top_share']:.1f}% of the tokens (limit {100 * self.cfg.max_top_share:.0f}%)")
        else:
            message = (f"MoE token drops in layer {layer}: {100 * m['drop_rate']:.2f}% of assignments dropped "
                       f"(limit {100 * self.cfg.max_drop_rate:.2f}%); raise model.moe.capacity_factor or check balance")
        details = {"layer": layer, "reason": reason, "top_share": m["top_share"], "drop_rate": m["drop_rate"],
                   "cv": m["cv"], "tokens_per_expert": m["tokens_per_expert"]}
        ctx.event("moe_routing_collapse", message=message, **details)
        if self.alerts is not None:
            self.alerts.send("warning", "moe_routing_collapse", message, step, **details)

    def _histogram(self, tag: str, loads: list[float], step: int) -> None:
        """Expert id on the x axis, tokens routed on the y axis (one bucket per expert)."""
        n = len(loads)
        total = sum(loads)
        self.writer.add_histogram_raw(
            tag, min=0, max=n - 1, num=total,
            sum=sum(i * c for i, c in enumerate(loads)), sum_squares=sum(i * i * c for i, c in enumerate(loads)),
            bucket_limits=[i + 0.5 for i in range(n)], bucket_counts=loads, global_step=step,
        )


def build_moe_callbacks(ctx: "TrainContext", given: list[Callback] | None = None) -> list[Callback]:
    """[MoEMonitor()] for a MoE model unless the caller already passed one; [] for a dense model."""
    if not moe_layers(ctx.raw_model) or any(isinstance(cb, MoEMonitor) for cb in given or []):
        return []
    return [MoEMonitor()]
