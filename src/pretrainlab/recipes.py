"""The standard training recipe: what `pretrainlab train` runs, assembled from the config.

The trainer (train/trainer.py) takes a ``Recipe`` and imports none of the
packages that fill it; this module picks them: the module to train (the
Transformer, with multimodal heads when the multimodal loss terms are on), the
callbacks (MoE routing monitor, guards, in-training task eval, multimodal
metrics, the per-rank hardware/straggler monitor), the metrics sinks (JSONL,
TensorBoard, W&B, MLflow, the Prometheus endpoint), validation
(held-out loss per source) and the hardware peak for MFU. It sits above
train, eval, monitor and multimodal, and below experiments and cli: every caller
of training (CLI, quickstart, experiments, sweeps, tests) goes through ``train``
here, so each gets the same callbacks.
"""

from __future__ import annotations

from torch import nn

from pretrainlab.config import ProjectConfig
from pretrainlab.eval.callback import eval_callbacks
from pretrainlab.eval.perplexity import perplexity_per_source
from pretrainlab.model.transformer import Transformer
from pretrainlab.monitor.cluster import build_cluster_callbacks
from pretrainlab.monitor.flops import resolve_peak_flops
from pretrainlab.monitor.sinks import JsonlSink, MultiSink, TensorBoardSink
from pretrainlab.multimodal.model import build_multimodal_model, wants_multimodal_heads
from pretrainlab.multimodal.train_callback import build_multimodal_callbacks
from pretrainlab.progress import console
from pretrainlab.train import trainer
from pretrainlab.train.callbacks import Callback
from pretrainlab.train.context import Recipe, TrainContext
from pretrainlab.train.guard import build_guard_callbacks
from pretrainlab.train.memory_probe import build_memory_probe
from pretrainlab.train.moe_monitor import build_moe_callbacks


def build_model(cfg: ProjectConfig) -> nn.Module:
    """The Transformer, or the Transformer with the multimodal heads its loss terms train."""
    if wants_multimodal_heads(cfg):
        return build_multimodal_model(cfg)
    return Transformer(cfg.model)


def build_callbacks(ctx: TrainContext, given: list[Callback]) -> list[Callback]:
    """The caller's callbacks first, then what the config asks for."""
    return [*given, *build_moe_callbacks(ctx, given), *build_guard_callbacks(ctx), *eval_callbacks(ctx.cfg),
            *build_multimodal_callbacks(ctx), *build_memory_probe(ctx),
            *build_cluster_callbacks(ctx)]  # cluster monitor last: it times steps


def build_sinks(ctx: TrainContext) -> MultiSink:
    log = ctx.cfg.log
    sinks = [JsonlSink(ctx.run_dir / "metrics.jsonl")]
    if log.tensorboard:
        sinks.append(TensorBoardSink(ctx.run_dir / "tb"))
    if log.wandb:
        from pretrainlab.monitor.sinks import WandbSink  # imports wandb

        sinks.append(WandbSink(ctx.run_dir, log.wandb_project, ctx.cfg.run.name, ctx.cfg.model_dump(mode="json")))
    if log.mlflow:
        from pretrainlab.monitor.sinks import MlflowSink  # imports mlflow

        flat = {f"{sec}.{k}": v for sec, d in ctx.cfg.model_dump(mode="json").items() if isinstance(d, dict)
                for k, v in d.items() if not isinstance(v, (dict, list))}
        sinks.append(MlflowSink(ctx.run_dir, ctx.cfg.run.name, log.mlflow_tracking_uri, flat))
    if ctx.cfg.prometheus.enabled:
        sinks.append(prometheus_exporter(ctx))
    return MultiSink(sinks)


def prometheus_exporter(ctx: TrainContext):
    """Rank 0's /metrics endpoint (monitor/prometheus.py), with the governance facts of the run's dataset."""
    from pretrainlab.monitor import governance
    from pretrainlab.monitor.prometheus import PrometheusExporter  # imports prometheus_client

    def facts() -> dict | None:
        clean = governance.corpus_of_tokens(ctx.cfg.train_tokens_dir)
        report = governance.governance_report(clean) if clean is not None else None
        return governance.summary(report) if report else None

    exporter = PrometheusExporter(ctx.cfg.prometheus, ctx.run_dir.name, ctx.run_dir, governance=facts)
    ctx.event("prometheus", address=exporter.address, path="/metrics")
    console.print(f"prometheus: serving http://{exporter.address}/metrics")
    return exporter


def validate(ctx: TrainContext) -> dict:
    """Held-out loss overall and per source, on ``train.val_batches`` micro-batches of each."""
    cfg = ctx.cfg
    max_tokens = cfg.train.val_batches * cfg.train.micro_batch * cfg.train.seq_len
    per_source = perplexity_per_source(
        ctx.raw_model,
        cfg.train_tokens_dir,
        seq_len=cfg.train.seq_len,
        max_tokens_per_source=max_tokens,
        batch_size=cfg.train.micro_batch,
        device=ctx.device,
    )
    record: dict = {"kind": "val", "step": ctx.step, "tokens": ctx.tokens_seen}
    for name, res in per_source.items():
        if not isinstance(res, dict) or res.get("loss") is None:
            continue
        if name == "overall":
            record["val_loss"] = res["loss"]
        else:
            record[f"val_loss/{name}"] = res["loss"]
    return record


def build_recipe(cfg: ProjectConfig) -> Recipe:
    return Recipe(build_model=build_model, build_callbacks=build_callbacks, build_sinks=build_sinks,
                  validate=validate, peak_flops=resolve_peak_flops)


def train(cfg: ProjectConfig, resume: str = "auto", callbacks: list[Callback] | None = None) -> dict:
    """Train per ``cfg`` with the standard recipe; ``resume``: "auto", "never", or a checkpoint path."""
    return trainer.train(cfg, build_recipe(cfg), resume=resume, callbacks=callbacks)
