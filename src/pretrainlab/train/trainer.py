"""The training loop: batches -> forward/backward with accumulation -> clipped AdamW step.

The loop knows nothing about a particular model beyond ``model(x, y) -> (logits,
loss)``; logging, validation and checkpoints are small functions here, and
anything optional hooks in through ``callbacks``. Runs single-process or under
torchrun (DDP, one replica per rank).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pretrainlab.config import ProjectConfig, dump_yaml, load_run_config
from pretrainlab.errors import UserError
from pretrainlab.fsio import append_jsonl, atomic_write_json, atomic_write_text, iter_jsonl, read_json
from pretrainlab.model.transformer import Transformer, count_params, flops_per_token
from pretrainlab.progress import console
from pretrainlab.provenance import code_version, host_info
from pretrainlab.train import checkpoint as ckpt
from pretrainlab.train.callbacks import Callback, CallbackList
from pretrainlab.train.loader import MixtureLoader
from pretrainlab.train.optim import build_optimizer, lr_at, set_lr
from pretrainlab.train.parallel import (
    autocast_context,
    full_state,
    grad_sync_context,
    init_distributed,
    load_full_state,
    load_sharded_state,
    sharded_state,
    wrap_model,
)
from pretrainlab.train.parallel_ep import check_expert_parallel, setup_expert_parallel


@dataclass
class TrainContext:
    """Live state of a run, handed to callbacks."""

    cfg: ProjectConfig
    run_dir: Path
    model: nn.Module
    raw_model: Transformer
    optimizer: torch.optim.Optimizer
    loader: MixtureLoader
    device: torch.device
    rank: int = 0
    world: int = 1
    step: int = 0
    tokens_seen: int = 0
    skip_step: bool = False
    checkpointer: "ckpt.AsyncCheckpointer | None" = None  # set when checkpoint.async_save
    ckpt_format: str = "full"  # resolved checkpoint.format: full | sharded
    ckpt_group: object | None = None  # gloo process group for sharded saves (world > 1)
    best_val: float = float("inf")
    sinks: object | None = None
    history: list[dict] = field(default_factory=list)
    data_batches: int = 0  # global batches drawn from the loader (steps + batches skipped by rollbacks)
    callbacks: CallbackList | None = None
    rollback_request: dict | None = None  # set by a guard: roll back after this step
    pause_request: dict | None = None  # set by a guard: checkpoint and pause after this step

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def request_rollback(self, reason: str, skip_batches: int) -> None:
        self.rollback_request = {"reason": reason, "skip_batches": skip_batches}

    def request_pause(self, rule: str, message: str) -> None:
        self.pause_request = {"rule": rule, "message": message}

    def event(self, name: str, **fields) -> None:
        if self.is_main:
            append_jsonl(self.run_dir / "events.jsonl", {"time": time.time(), "step": self.step, "event": name, **fields})


# --------------------------------------------------------------------------- setup


def _pick_device(cfg: ProjectConfig, local_rank: int) -> torch.device:
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is available; use --set train.device=cpu (or auto)")
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _resolve_paths_and_vocab(cfg: ProjectConfig) -> tuple[ProjectConfig, dict, dict]:
    """Pin every input path to an absolute one and the vocabulary to the tokenizer's."""
    from pretrainlab.tokenizer.shards import read_tokens_manifest
    from pretrainlab.tokenizer.vocab import load_tokenizer

    tokens_dir = cfg.train_tokens_dir.resolve()
    tok = load_tokenizer(cfg.tokenize_tokenizer_dir)
    manifest = read_tokens_manifest(tokens_dir)
    shard_tok = manifest.get("tokenizer_sha256")
    if shard_tok and shard_tok != tok.sha256:
        raise UserError(
            f"{tokens_dir} was tokenized with a different tokenizer than {cfg.tokenize_tokenizer_dir}; "
            "re-run `pretrainlab data tokenize`"
        )
    if cfg.model.vocab_size is not None and cfg.model.vocab_size < tok.vocab_size:
        raise UserError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {tok.vocab_size}; raise or unset it"
        )
    data = cfg.model_dump(mode="json")
    data["workdir"] = str(cfg.workdir.resolve())
    data["train"]["tokens"] = str(tokens_dir)
    data["tokenizer"]["out"] = str(Path(tok.path).resolve())
    data["run"]["dir"] = str(cfg.run_dir.resolve())
    data["model"]["vocab_size"] = cfg.model.vocab_size or tok.vocab_size
    if cfg.model.max_seq_len < cfg.train.seq_len:
        data["model"]["max_seq_len"] = cfg.train.seq_len
    resolved = ProjectConfig.model_validate(data)
    info = {"sha256": tok.sha256, "vocab_size": tok.vocab_size, "path": str(tok.path),
            "eos_id": tok.eos_id, "pad_id": tok.pad_id}
    return resolved, info, manifest


def _check_resume_compatible(run_dir: Path, cfg: ProjectConfig) -> None:
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = load_run_config(run_dir)
    for section in ("model",):
        if getattr(saved, section) != getattr(cfg, section):
            raise UserError(
                f"{run_dir}: the '{section}' config differs from the one this run was started with; "
                "resume with the same settings or choose a new run.name"
            )
    if (saved.train.seq_len, saved.train.micro_batch, saved.train.global_batch_tokens) != (
        cfg.train.seq_len,
        cfg.train.micro_batch,
        cfg.train.global_batch_tokens,
    ):
        raise UserError(f"{run_dir}: batch geometry differs from the saved run's; resume with the same train.* batch settings")


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _quarantine_future_metrics(run_dir: Path, step: int) -> int:
    """On resume, move metric records past the checkpoint into metrics.orphaned.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    keep, orphaned = [], []
    for rec in iter_jsonl(path):
        (orphaned if rec.get("step", 0) > step else keep).append(rec)
    if orphaned:
        for rec in orphaned:
            append_jsonl(run_dir / "metrics.orphaned.jsonl", rec)
        import json

        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    return len(orphaned)


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# --------------------------------------------------------------------------- loop pieces


def validate(ctx: TrainContext) -> dict:
    from pretrainlab.eval.perplexity import perplexity_per_source

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


def wait_for_saves(ctx: TrainContext) -> None:
    """Block until an in-flight async checkpoint is complete (before reading or replacing checkpoints)."""
    if ctx.checkpointer is not None:
        ctx.checkpointer.wait()


def save(ctx: TrainContext, step_start: dict | None = None, best: float | None = None) -> Path | None:
    """Checkpoint the state after ``ctx.step`` completed steps.

    ``step_start`` (loader and RNG state captured when the current step began) is
    used when interrupted mid-step, so the data that step had drawn is replayed.
    """
    sharded = ctx.ckpt_format == "sharded"
    if sharded:  # every rank writes its own shard: no gather
        app_state = sharded_state(ctx.model, ctx.optimizer)
    else:
        model_state, optim_state = full_state(ctx.model, ctx.optimizer)  # collective under FSDP2
        if not ctx.is_main:
            return None
    state = {
        "step": ctx.step,
        "tokens_seen": ctx.tokens_seen,
        "loader": step_start["loader"] if step_start else ctx.loader.state_dict(),
        "data_batches": step_start.get("data_batches", ctx.data_batches) if step_start else ctx.data_batches,
        "callbacks": ctx.callbacks.state_dict() if ctx.callbacks else {},
    }
    tokens_before = ctx.last_save_tokens if hasattr(ctx, "last_save_tokens") else 0
    ctx.last_save_tokens = ctx.tokens_seen
    every = ctx.cfg.checkpoint.milestone_every_tokens
    milestone = bool(every) and ctx.tokens_seen // every > tokens_before // every

    def after_write(path: Path) -> None:
        removed = ckpt.prune_checkpoints(ctx.run_dir, ctx.cfg.checkpoint.keep_last)
        extra = {}
        if milestone:
            extra["milestone"] = str(ckpt.save_milestone(ctx.run_dir, path, (ctx.tokens_seen // every) * every))
        if best is not None:
            extra["best"] = str(ckpt.save_best(ctx.run_dir, path, best))
        ctx.event("checkpoint", path=str(path), pruned=[p.name for p in removed], **extra)

    rng = step_start["rng"] if step_start else _rng_state(ctx.device)
    meta = {"tokens": ctx.tokens_seen, "world_size": ctx.world, "parallel": ctx.cfg.train.parallel}
    if sharded:
        if ctx.checkpointer is not None:
            return ctx.checkpointer.save(ctx.run_dir, ctx.step, app_state, rng, state, meta,
                                         on_done=after_write if ctx.is_main else None)
        path = ckpt.save_sharded_checkpoint(ctx.run_dir, ctx.step, app_state, rng, state, meta,
                                            rank=ctx.rank, group=ctx.ckpt_group)
        if ctx.is_main:
            after_write(path)
        return path
    args = (ctx.run_dir, ctx.step, model_state, optim_state, rng, state, meta)
    if ctx.checkpointer is not None:
        path = ctx.checkpointer.save(*args, on_done=after_write)
    else:
        path = ckpt.save_checkpoint(*args)
        after_write(path)
    return path


def rollback(ctx: TrainContext, accum: int, reason: str, skip_batches: int) -> dict:
    """Reload the newest complete checkpoint (model, optimizer, data position, RNG), then skip data.

    The guard asks for this after repeated bad steps (PaLM's remedy): the run goes
    back to the checkpoint's step and the next ``skip_batches`` global batches of
    data are drawn and discarded. Metrics logged past the checkpoint move to
    metrics.orphaned.jsonl. Callback state is not reloaded (the guard counts rollbacks).
    """
    from pretrainlab.errors import TrainingStopped

    wait_for_saves(ctx)
    path = ckpt.latest_checkpoint(ctx.run_dir)
    if path is None:
        raise TrainingStopped(f"{ctx.run_dir}: a rollback was needed ({reason}) but no complete checkpoint exists; "
                              "lower optim.lr or checkpoint.every and start again")
    state = ckpt.load_checkpoint(path, map_location="cpu")
    from_step = ctx.step
    ctx.optimizer.zero_grad(set_to_none=True)
    _load_weights(ctx, state)
    ctx.loader.load_state_dict(state["state"]["loader"])
    _set_rng_state(state["rng"], ctx.device)
    ctx.step = state["state"]["step"]
    ctx.tokens_seen = state["state"]["tokens_seen"]
    ctx.data_batches = state["state"].get("data_batches", ctx.step)
    for _ in range(skip_batches * accum):
        ctx.loader.next_batch()
    ctx.data_batches += skip_batches
    ctx.history = [m for m in ctx.history if m.get("step", 0) <= ctx.step]
    orphaned = _quarantine_future_metrics(ctx.run_dir, ctx.step) if ctx.is_main else 0
    lost_s = max(0.0, time.time() - state["meta"].get("saved_at", time.time()))
    info = {"checkpoint": str(path), "from_step": from_step, "to_step": ctx.step, "skipped_batches": skip_batches,
            "data_batches": ctx.data_batches, "reason": reason, "lost_s": lost_s, "orphaned_metric_records": orphaned}
    ctx.event("rollback", **info)
    console.print(f"[yellow]rollback[/]: {reason}; back to {path.name}, skipped {skip_batches} batches of data")
    return info


def _load_weights(ctx: TrainContext, loaded: dict) -> None:
    """Model and optimizer state from a checkpoint of either format, onto this run's layout (resharding)."""
    if loaded["format"] == "sharded":
        load_sharded_state(ctx.model, ctx.optimizer, loaded["path"], group=ctx.ckpt_group)
    else:
        load_full_state(ctx.model, ctx.optimizer, loaded["model"], loaded["optim"])


def pause(ctx: TrainContext, request: dict | None, already_saved: bool = False) -> None:
    """Checkpoint (unless this step just was), record the pause, and stop with ``TrainingPaused``."""
    from pretrainlab.errors import TrainingPaused

    request = request or {"rule": "pause", "message": "requested on another rank"}
    ctx.pause_request = None
    path = None if already_saved else save(ctx)
    wait_for_saves(ctx)  # complete before the process exits (and before looking up an async save)
    path = path or ckpt.latest_checkpoint(ctx.run_dir)
    ctx.event("pause", rule=request["rule"], message=request["message"], checkpoint=str(path))
    raise TrainingPaused(f"training paused at step {ctx.step} by guard rule {request['rule']}: {request['message']}; "
                         "inspect the run, then continue with `pretrainlab train ... --resume auto`", checkpoint=str(path))


def _any_rank(ctx: TrainContext, *flags: bool) -> list[bool]:
    """Each flag OR-ed over the ranks (one collective), so every rank takes the same guard action."""
    if ctx.world <= 1:
        return list(flags)
    import torch.distributed as dist

    t = torch.tensor([1 if f else 0 for f in flags], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def _make_sinks(ctx: TrainContext):
    from pretrainlab.monitor.sinks import JsonlSink, MultiSink, TensorBoardSink

    log = ctx.cfg.log
    sinks = [JsonlSink(ctx.run_dir / "metrics.jsonl")]
    if log.tensorboard:
        sinks.append(TensorBoardSink(ctx.run_dir / "tb"))
    if log.wandb:
        from pretrainlab.monitor.sinks import WandbSink

        sinks.append(WandbSink(ctx.run_dir, log.wandb_project, ctx.cfg.run.name, ctx.cfg.model_dump(mode="json")))
    if log.mlflow:
        from pretrainlab.monitor.sinks import MlflowSink

        flat = {f"{sec}.{k}": v for sec, d in ctx.cfg.model_dump(mode="json").items() if isinstance(d, dict)
                for k, v in d.items() if not isinstance(v, (dict, list))}
        sinks.append(MlflowSink(ctx.run_dir, ctx.cfg.run.name, log.mlflow_tracking_uri, flat))
    return MultiSink(sinks)


# --------------------------------------------------------------------------- entry point


def train(cfg: ProjectConfig, resume: str = "auto", callbacks: list[Callback] | None = None) -> dict:
    """Train per ``cfg``; ``resume``: "auto" (newest complete checkpoint if any), "never", or a checkpoint path."""
    from pretrainlab.monitor.flops import mfu as compute_mfu
    from pretrainlab.monitor.flops import resolve_peak_flops

    rank, world, local_rank = init_distributed()
    device = _pick_device(cfg, local_rank)
    if device.type == "cpu":
        torch.set_num_threads(cfg.train.threads or os.cpu_count() or 1)
    cfg, tok_info, tokens_manifest = _resolve_paths_and_vocab(cfg)
    tc = cfg.train
    rows_per_step = tc.global_batch_tokens // tc.seq_len
    if rows_per_step % (tc.micro_batch * world):
        raise UserError(
            f"train.global_batch_tokens={tc.global_batch_tokens} is not divisible by micro_batch*seq_len*world "
            f"({tc.micro_batch}*{tc.seq_len}*{world}); adjust train.global_batch_tokens or train.micro_batch"
        )
    accum = rows_per_step // (tc.micro_batch * world)
    check_expert_parallel(cfg, world)
    run_dir = cfg.run_dir

    latest = ckpt.latest_checkpoint(run_dir)
    if resume == "never" and (latest is not None or (run_dir / "metrics.jsonl").exists()):
        raise UserError(
            f"{run_dir} already holds a run; continue it with --resume auto, or pick a new --set run.name=NAME"
        )
    resume_from: Path | None = None
    if resume == "auto":
        resume_from = latest
    elif resume != "never":
        resume_from = ckpt.resolve_checkpoint(run_dir, resume)
    if resume_from is not None:
        _check_resume_compatible(run_dir, cfg)

    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    np.random.seed(tc.seed)
    model = Transformer(cfg.model).to(device)
    ep = setup_expert_parallel(model, cfg, world, device)  # None unless train.expert_parallel > 1
    wrapped = wrap_model(model, cfg, device, world, local_rank)
    optimizer = build_optimizer(model, cfg.optim, device.type)
    events: list[tuple[str, dict]] = []  # loader events before the context exists
    loader = MixtureLoader(
        cfg.train_tokens_dir, tc.seq_len, tc.micro_batch, tc.seed,
        mix=cfg.mix, packing=cfg.packing, eos_id=tok_info["eos_id"], pad_id=tok_info["pad_id"],
        total_tokens=tc.steps * tc.global_batch_tokens, rank=rank, world=world,
        on_event=lambda name, **kw: events.append((name, kw)),
    )
    ctx = TrainContext(cfg, run_dir, wrapped, model, optimizer, loader, device, rank, world)
    loader.on_event = ctx.event
    ctx.ckpt_format = ckpt.resolve_format(cfg.checkpoint.format, world, tc.expert_parallel)
    if world > 1:  # sharded saves and loads talk on their own gloo group (CPU; never interleaved with training's)
        import torch.distributed as dist

        ctx.ckpt_group = dist.new_group(backend="gloo")
    if cfg.checkpoint.async_save:
        ctx.checkpointer = (ckpt.ShardedAsyncCheckpointer(rank, ctx.ckpt_group) if ctx.ckpt_format == "sharded"
                            else ckpt.AsyncCheckpointer())
    fpt = flops_per_token(cfg.model, tc.seq_len)
    peak, peak_source = resolve_peak_flops(cfg, device)
    params = count_params(cfg.model)

    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
        meta = {
            **code_version(),
            **host_info(),
            "start_time": time.time(),
            "tokenizer_sha256": tok_info["sha256"],
            "dataset_manifest_id": tokens_manifest.get("manifest_id") or tokens_manifest.get("corpus_manifest_sha256"),
            "tokens_manifest": str(cfg.train_tokens_dir / "manifest.json"),
            "params": params,
            "flops_per_token": fpt,
            "flops_formula": "6*(params - input embedding) + 12*layers*d_model*seq_len",
            "peak_flops": peak * world,
            "peak_flops_source": peak_source,
            "device": str(device),
            "world_size": world,
            "expert_parallel": tc.expert_parallel,
            "grad_accum": accum,
            "mix_stages": [{"name": st.name, "until_tokens": st.until_tokens, "weights": st.weights}
                           for st in loader.stages],
        }
        meta_path = run_dir / "meta.json"
        if meta_path.exists() and resume_from is not None:
            meta = {**read_json(meta_path), "resumed_at": time.time(), **{k: meta[k] for k in ("git_sha", "git_dirty")}}
        atomic_write_json(meta_path, meta)

    if resume_from is not None:
        state = ckpt.load_checkpoint(resume_from, map_location="cpu")
        _load_weights(ctx, state)
        loader.load_state_dict(state["state"]["loader"])
        _set_rng_state(state["rng"], device)
        ctx.step = state["state"]["step"]
        ctx.tokens_seen = state["state"]["tokens_seen"]
        ctx.data_batches = state["state"].get("data_batches", ctx.step)
        saved_world = state["meta"].get("world_size")  # absent in checkpoints written before it was recorded
        if ctx.is_main:
            orphaned = _quarantine_future_metrics(run_dir, ctx.step)
            ctx.event("resume", checkpoint=str(resume_from), orphaned_metric_records=orphaned, format=state["format"],
                      saved_world_size=saved_world, world_size=world)
        # The loader state is global (every rank draws the same rows, keeps every world-th), so it re-splits itself.
        resharded = f", resharded from {saved_world} to {world} processes" if saved_world not in (None, world) else ""
        console.print(f"resumed from {resume_from} at step {ctx.step}{resharded}")
    else:
        ctx.event("start", params=params["total"])
    for name, fields in events:
        ctx.event(name, **fields)

    if ctx.is_main:
        console.print(
            f"model: {params['total']:,} params ({params['non_embedding']:,} non-embedding), "
            f"{fpt / 1e6:.2f} MFLOP/token; {tc.steps} steps x {tc.global_batch_tokens:,} tokens "
            f"(micro-batch {tc.micro_batch} x {tc.seq_len}, accum {accum}, world {world}); "
            f"device {device}, peak {peak / 1e12:.3g} TFLOP/s ({peak_source})"
        )
    sinks = _make_sinks(ctx) if ctx.is_main else None
    ctx.sinks = sinks  # callbacks that log their own records (in-training eval) go through the same sinks
    from pretrainlab.train.guard import build_guard_callbacks
    from pretrainlab.train.moe_monitor import build_moe_callbacks

    from pretrainlab.eval.callback import eval_callbacks

    from pretrainlab.multimodal.train_callback import build_multimodal_callbacks

    cbs = CallbackList([*(callbacks or []), *build_moe_callbacks(ctx, callbacks), *build_guard_callbacks(ctx),
                        *eval_callbacks(cfg), *build_multimodal_callbacks(ctx)])
    ctx.callbacks = cbs
    if resume_from is not None:
        cbs.load_state_dict(state["state"].get("callbacks", {}))
    elif cfg.guard.enabled:
        save(ctx)  # a rollback target before the first scheduled checkpoint
    cbs.on_train_start(ctx)

    amp = autocast_context(cfg, device, world)
    # fp16 without loss scaling is allowed on purpose (accident experiments): small gradients then underflow
    scaler = torch.amp.GradScaler(device.type, enabled=tc.precision == "fp16" and tc.loss_scaling)
    params_list = [p for p in model.parameters() if p.requires_grad]
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    t_start = time.perf_counter()
    t_last, tokens_last = t_start, ctx.tokens_seen
    first_val = final_val = None
    tokens_per_s = mfu_value = 0.0
    start_step = ctx.step
    step_start: dict | None = None
    if ctx.step == 0:
        val = validate(ctx)  # the starting point every later validation is compared with
        first_val = val.get("val_loss")
        if ctx.is_main:
            sinks.log(val)
            console.print(f"step {0:>6}/{tc.steps} | val_loss {first_val:.4f} (before training)")
    model.train()

    try:
        while ctx.step < tc.steps:
            step_start = {"loader": loader.state_dict(), "rng": _rng_state(device), "data_batches": ctx.data_batches}
            lr = lr_at(ctx.step, tc.steps, cfg.optim)
            set_lr(optimizer, lr)
            loss_sum = torch.zeros((), device=device)
            term_sums: dict[str, torch.Tensor] = {}  # extra loss terms from callbacks (e.g. multimodal), logged each
            for micro in range(accum):
                batch = loader.next_batch().to(device)
                with grad_sync_context(wrapped, sync=micro == accum - 1):
                    with amp:
                        logits, loss = wrapped(batch.inputs, batch.targets, doc_ids=batch.doc_ids)
                        extra = cbs.extra_losses(ctx, batch, logits)
                        if extra:
                            term_sums["ce_loss"] = term_sums.get("ce_loss", 0) + loss.detach()
                            for name, term in extra.items():
                                loss = loss + term
                                term_sums[name] = term_sums.get(name, 0) + term.detach()
                    scaler.scale(loss / accum).backward()
                loss_sum += loss.detach()
            ctx.data_batches += 1
            if ep is not None:
                ep.finish_grads()  # expert slices: not reduced by data parallelism
            scaler.unscale_(optimizer)
            grad_norm = (ep.clip_grad_norm_(params_list, clip) if ep is not None
                         else torch.nn.utils.clip_grad_norm_(params_list, clip))
            loss_value = loss_sum / accum
            if world > 1:
                import torch.distributed as dist

                dist.all_reduce(loss_value, op=dist.ReduceOp.AVG)
                for v in term_sums.values():
                    dist.all_reduce(v, op=dist.ReduceOp.AVG)
            metrics = {
                "kind": "train",
                "step": ctx.step + 1,
                "tokens": ctx.tokens_seen + tc.global_batch_tokens,
                "loss": float(loss_value),
                "lr": lr,
                "grad_norm": float(grad_norm),
                "time": time.time(),
                **{name: float(v) / accum for name, v in term_sums.items()},
            }
            if scaler.is_enabled():
                metrics["loss_scale"] = float(scaler.get_scale())
            if tc.precision == "fp16":
                metrics["overflow"] = not math.isfinite(metrics["grad_norm"])
            ctx.skip_step = False
            cbs.on_after_backward(ctx, metrics)
            if ctx.skip_step:
                metrics["skipped"] = True
            else:
                if ctx.checkpointer is not None:
                    ctx.checkpointer.wait_staged()  # an async save may still be copying these parameters
                scaler.step(optimizer)  # a plain optimizer.step() unless loss scaling (then skipped on overflow)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            ctx.step += 1
            ctx.tokens_seen += tc.global_batch_tokens
            step_start = None  # the live state now matches ctx.step again
            cbs.on_step_end(ctx, metrics)
            last = ctx.step == tc.steps
            if ctx.step % tc.log_every == 0 or last:
                now = time.perf_counter()
                tokens_per_s = (ctx.tokens_seen - tokens_last) / max(now - t_last, 1e-9)
                mfu_value = compute_mfu(tokens_per_s, fpt, peak * world)
                done = ctx.step - start_step
                eta = (now - t_start) / max(done, 1) * (tc.steps - ctx.step)
                metrics.update(tokens_per_s=tokens_per_s, mfu=mfu_value, elapsed_s=now - t_start, **loader.metrics())
                t_last, tokens_last = now, ctx.tokens_seen
                if ctx.is_main:
                    sinks.log(metrics)
                    console.print(
                        f"step {ctx.step:>6}/{tc.steps} | loss {metrics['loss']:.4f} | lr {lr:.2e} | "
                        f"gnorm {metrics['grad_norm']:.3f} | {tokens_per_s:,.0f} tok/s | "
                        f"MFU {100 * mfu_value:.1f}% | eta {_fmt_duration(eta)}"
                    )
            ctx.history.append(metrics)
            roll_back, pause_now = _any_rank(ctx, ctx.rollback_request is not None, ctx.pause_request is not None)
            if roll_back:
                request = ctx.rollback_request or {"reason": "requested on another rank",
                                                   "skip_batches": cfg.guard.skip_batches}
                ctx.rollback_request = None
                rollback(ctx, accum, request["reason"], request["skip_batches"])
                t_last, tokens_last = time.perf_counter(), ctx.tokens_seen
                continue

            t_pause = time.perf_counter()
            best = None
            if ctx.step % tc.val_every == 0 or last:
                val = validate(ctx)  # every rank runs it: FSDP2 forwards are collective
                will_save = ctx.step % cfg.checkpoint.every == 0 or last
                # best-by-validation among checkpointed steps (no extra saves)
                if cfg.checkpoint.keep_best and will_save and (val.get("val_loss") or float("inf")) < ctx.best_val:
                    ctx.best_val = best = val["val_loss"]
                if ctx.is_main:
                    sinks.log(val)
                    console.print(f"step {ctx.step:>6}/{tc.steps} | val_loss {val.get('val_loss', float('nan')):.4f}")
                    first_val = val.get("val_loss") if first_val is None else first_val
                    final_val = val.get("val_loss")
                    cbs.on_validation(ctx, val)
                    ctx.event("mix_shares", stages=loader.shares())
                model.train()
            if ctx.step % cfg.checkpoint.every == 0 or last:
                path = save(ctx, best=best)
                cbs.on_checkpoint(ctx, path)
            if pause_now and not last:
                pause(ctx, ctx.pause_request, already_saved=ctx.step % cfg.checkpoint.every == 0)
            t_last += time.perf_counter() - t_pause  # validation and saving don't count against throughput
    except KeyboardInterrupt:
        if ctx.step > start_step:
            path = save(ctx, step_start)
            wait_for_saves(ctx)
            ctx.event("interrupted", checkpoint=str(path))
            console.print(f"interrupted: saved {path}; continue with --resume auto")
        raise
    finally:
        if sinks is not None:
            sinks.close()
    wait_for_saves(ctx)
    if ctx.checkpointer is not None:
        ctx.checkpointer.close()  # frees the sharded saver's staging buffers

    cbs.on_train_end(ctx)
    seconds = time.perf_counter() - t_start
    ctx.event("end", seconds=seconds)
    return {
        "run_dir": str(run_dir),
        "steps": ctx.step,
        "tokens": ctx.tokens_seen,
        "seconds": seconds,
        "tokens_per_s": tokens_per_s,
        "mfu": mfu_value,
        "first_val_loss": first_val,
        "final_val_loss": final_val,
        "losses": [m["loss"] for m in ctx.history],
    }
