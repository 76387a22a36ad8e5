"""Multimodal training metrics and the per-modality CE weighting, through the trainer's callback hooks.

The InfoNCE and action terms and their trainable parameters live in the model
(``multimodal/model.py``). ``MultimodalLosses`` adds what needs no parameter:
the per-modality cross-entropy weighting (``multimodal.ce_weights``, a loss term
over the logits), the unweighted CE of each target modality (``ce/<modality>``),
the learned temperature (``infonce/temperature``), and ``mm eval`` at the end of
the run (``multimodal.eval_at_end``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from pretrainlab.errors import UserError
from pretrainlab.multimodal.modality import MODALITIES, class_table, per_class_sums, token_classes, weighted_ce_term
from pretrainlab.progress import console
from pretrainlab.train.callbacks import Callback

if TYPE_CHECKING:
    from pretrainlab.train.context import TrainContext


def to_json(obj):
    """Tensors (nested in dicts/lists) as JSON-serializable ``{"__tensor__": [...], "dtype": ...}``."""
    if isinstance(obj, torch.Tensor):
        return {"__tensor__": obj.detach().cpu().float().tolist(), "dtype": str(obj.dtype).removeprefix("torch.")}
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    return obj


def from_json(obj):
    """The inverse of ``to_json``."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return torch.tensor(obj["__tensor__"], dtype=getattr(torch, obj["dtype"]))
        return {k: from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json(v) for v in obj]
    return obj


def _temperature(tau) -> float:
    """τ after this step's update; outside a forward FSDP2 holds each rank's shard, so gather it (collective)."""
    log_tau = tau.log_tau.detach()
    if hasattr(log_tau, "full_tensor"):  # a DTensor
        log_tau = log_tau.full_tensor()
    return float(log_tau.exp().clamp(tau.min_tau, 1.0)[0])


class MultimodalLosses(Callback):
    """Per-modality CE weighting (added to every micro-batch's loss) and the multimodal metrics.

    Logs the unweighted CE of each target modality (``ce/<modality>``) on log steps (every step
    when ``multimodal.ce_weights`` is set, since the weighting needs it anyway), the learned τ
    (``infonce/temperature``), and runs ``mm eval`` at the end of the run (``multimodal.eval_at_end``).
    """

    needs_host_metrics = True  # its per-modality CE and temperature are read every step

    def __init__(self, ctx: "TrainContext"):
        from pretrainlab.multimodal.build import mm_paths
        from pretrainlab.tokenizer.vocab import load_tokenizer

        m = ctx.cfg.multimodal
        self.cfg = ctx.cfg
        self.spec = load_tokenizer(mm_paths(ctx.cfg)["tokenizer"]).spec
        self.table = torch.as_tensor(class_table(self.spec), device=ctx.device)
        self.weights = None
        if m.ce_weights:
            w = torch.ones(len(MODALITIES), device=ctx.device)
            for name, v in m.ce_weights.items():
                w[MODALITIES.index(name)] = v
            self.weights = w
        self.ce_sums = self.ce_counts = None

    def _log_step(self, ctx) -> bool:
        step = ctx.step + 1  # the step being computed
        return step % ctx.cfg.train.log_every == 0 or step == ctx.cfg.train.steps

    def extra_losses(self, ctx, batch, logits) -> dict[str, torch.Tensor]:
        if self.weights is None and not self._log_step(ctx):
            return {}
        ce = F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), ignore_index=-100,
                             reduction="none")
        classes = token_classes(batch.targets.flatten(), self.table)
        sums, counts = per_class_sums(ce.detach(), classes)
        self.ce_sums = sums if self.ce_sums is None else self.ce_sums + sums
        self.ce_counts = counts if self.ce_counts is None else self.ce_counts + counts
        if self.weights is None:
            return {}
        return {"loss/ce_weighting": weighted_ce_term(ce, classes, self.weights)}  # makes sum(ce)/n into sum(w·ce)/n

    def on_after_backward(self, ctx, metrics):
        if ctx.world > 1 and self.ce_sums is not None:  # per-modality CE over every rank's targets
            import torch.distributed as dist

            dist.all_reduce(self.ce_sums)
            dist.all_reduce(self.ce_counts)

    def on_step_end(self, ctx, metrics):
        if self.ce_sums is not None:
            for i, name in enumerate(MODALITIES):
                if self.ce_counts[i]:
                    metrics[f"ce/{name}"] = float(self.ce_sums[i] / self.ce_counts[i])
            self.ce_sums = self.ce_counts = None
        heads = getattr(ctx.raw_model, "mm", None)
        if heads is not None and heads.tau is not None:
            metrics["infonce/temperature"] = _temperature(heads.tau)


    def on_train_end(self, ctx):
        if not self.cfg.multimodal.eval_at_end or not ctx.is_main:
            return
        if ctx.world > 1:  # a sharded model's forward is collective: evaluate the saved run instead
            console.print(f"mm eval: skipped under {ctx.world} ranks; run `pretrainlab mm eval {ctx.run_dir}`")
            return
        from pretrainlab.multimodal.evaluate import run_eval

        heads = getattr(ctx.raw_model, "mm", None)
        head = heads.action if heads is not None else None
        run_eval(ctx.raw_model, self.cfg, head, out_dir=ctx.run_dir, device=ctx.device, step=ctx.step)

    def load_state_dict(self, state: dict) -> None:
        if "head" in state:  # written before the heads became model parameters (their own AdamW then)
            raise UserError("this checkpoint keeps the multimodal action head outside the model (a run saved by an "
                            "older pretrainlab); it cannot be resumed by this version: start a new run.name "
                            "(`pretrainlab mm eval` still evaluates it)")


def _trains_on_mm_shards(cfg) -> bool:
    try:
        return "multimodal" in json.loads((Path(cfg.train_tokens_dir) / "manifest.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def build_multimodal_callbacks(ctx: "TrainContext") -> list[Callback]:
    """[MultimodalLosses] when a multimodal loss term or CE weight is set or train.tokens holds `mm build` shards;
    [] otherwise (text runs)."""
    m = ctx.cfg.multimodal
    wanted = m.lambda_infonce or m.lambda_action or m.ce_weights or _trains_on_mm_shards(ctx.cfg)
    return [MultimodalLosses(ctx)] if wanted else []
