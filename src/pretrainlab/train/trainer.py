"""The training loop: setup -> restore -> steps (forward/backward with accumulation, clipped update) -> end.

The loop knows nothing about a particular model beyond the ``Recipe`` contract
(train/context.py): ``model(x, y, doc_ids=...) -> (logits, loss[, terms])``.
What a run trains, which callbacks it has, where its metrics go and how it is
validated come from the recipe (``pretrainlab.recipes.build_recipe``);
checkpointing is the ``Checkpointer`` callback (train/checkpointer.py). Runs
single-process or under torchrun (DDP or FSDP2). The shape follows torchtitan's
``train.py``: ``forward_backward`` / ``train_step`` / ``train``.

One step: ``train_step`` (draw, forward/backward, clip, update, ``on_step_end``),
``log_step``, then ``step_boundary``: guard rollback, validation when due,
``on_step_boundary`` (the checkpointer saves there), a guard pause.
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

from pretrainlab.config import ProjectConfig, dump_yaml, load_run_config
from pretrainlab.errors import TrainingInterrupted, TrainingPaused, UserError
from pretrainlab.fsio import atomic_write_json, atomic_write_text, read_json
from pretrainlab.model.transformer import count_params, flops_per_token
from pretrainlab.progress import console
from pretrainlab.provenance import code_version, host_info
from pretrainlab.train import checkpoint as ckpt
from pretrainlab.train import recovery
from pretrainlab.train.callbacks import Callback, CallbackList
from pretrainlab.train.checkpointer import Checkpointer, quarantine_future_metrics, rng_state
from pretrainlab.train.context import Recipe, TrainContext
from pretrainlab.train.interrupts import EXIT_PREEMPTED, StopSignals
from pretrainlab.train.loader import MixtureLoader
from pretrainlab.train.mesh import ParallelDims, resolve_dims
from pretrainlab.train.optim import build_optimizer, lr_at, set_lr
from pretrainlab.train.parallel import autocast_context, grad_sync_context, init_distributed
from pretrainlab.train.parallelize import Parallelism, parallelize

__all__ = ["Recipe", "TrainContext", "train"]


@dataclass
class StepRunner:
    """What the loop needs besides the context: precision, clipping, throughput clock, run summary."""

    recipe: Recipe
    amp: object
    scaler: torch.amp.GradScaler
    params: list
    clip: float
    par: Parallelism  # the layout's loss context, gradient finishing and global clip (train/parallelize.py)
    flops_per_token: float
    peak: float  # FLOP/s of all ranks together
    t_start: float = 0.0
    t_last: float = 0.0
    tokens_last: int = 0
    start_step: int = 0
    step_start: dict | None = None  # loader/RNG state when the step in progress began (None between steps)
    first_val: float | None = None
    final_val: float | None = None
    tokens_per_s: float = 0.0
    mfu: float = 0.0
    unread: list = field(default_factory=list)  # step records still holding device tensors (read_metrics)


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


def _grad_accum(cfg: ProjectConfig, world: int) -> int:
    tc = cfg.train
    rows_per_step = tc.global_batch_tokens // tc.seq_len
    if rows_per_step % (tc.micro_batch * world):
        raise UserError(
            f"train.global_batch_tokens={tc.global_batch_tokens} is not divisible by micro_batch*seq_len*data-parallel "
            f"ranks ({tc.micro_batch}*{tc.seq_len}*{world}); adjust train.global_batch_tokens or train.micro_batch"
        )
    return rows_per_step // (tc.micro_batch * world)


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


def _resume_target(cfg: ProjectConfig, resume: str, rank: int, world: int) -> tuple[Path | None, list]:
    """The checkpoint to continue from: "auto" (newest intact, if any), "never", or a checkpoint path.

    Also returns the damaged newer checkpoints "auto" skipped (``recovery.Skipped``), for the events log.
    """
    run_dir = cfg.run_dir
    latest = ckpt.latest_checkpoint(run_dir)
    if resume == "never" and (latest is not None or (run_dir / "metrics.jsonl").exists()):
        raise UserError(
            f"{run_dir} already holds a run; continue it with --resume auto, or pick a new --set run.name=NAME"
        )
    found = recovery.resume_auto(run_dir, rank, world) if resume == "auto" else None  # collective under torchrun
    if found is not None and found.skipped and rank == 0:
        console.print(f"[yellow]{found.summary()}[/]")
    target = found.path if found else None if resume == "never" else ckpt.resolve_checkpoint(run_dir, resume)
    if target is not None:
        _check_resume_compatible(run_dir, cfg)
    return target, found.skipped if found else []


def _build_context(cfg: ProjectConfig, recipe: Recipe, tok_info: dict, device: torch.device,
                   dist_info: tuple[int, int, int], accum: int, dims: ParallelDims) -> tuple[TrainContext, Parallelism, list]:
    """Seeded model (parallelized per ``dims``), optimizer and loader; returns (ctx, the layout, loader events)."""
    rank, world, local_rank = dist_info
    tc = cfg.train
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    np.random.seed(tc.seed)
    model = recipe.build_model(cfg).to(device)
    wrapped, par = parallelize(model, cfg, dims, device, local_rank, accum)
    if par.pipeline is not None:  # a pipeline rank holds and trains only its stages
        model = wrapped
    optimizer = build_optimizer(model, cfg.optim, device.type)
    events: list[tuple[str, dict]] = []  # loader events before the context exists
    loader = MixtureLoader(
        cfg.train_tokens_dir, tc.seq_len, tc.micro_batch, tc.seed,
        mix=cfg.mix, packing=cfg.packing, eos_id=tok_info["eos_id"], pad_id=tok_info["pad_id"],
        total_tokens=tc.steps * tc.global_batch_tokens, rank=dims.dp_rank(rank), world=dims.dp,
        on_event=lambda name, **kw: events.append((name, kw)),
    )
    ctx = TrainContext(cfg, cfg.run_dir, wrapped, model, optimizer, loader, device, rank, world, accum=accum)
    loader.on_event = ctx.event
    ctx.checkpointer = Checkpointer(ctx)
    return ctx, par, events


def _write_run_files(ctx: TrainContext, tok_info: dict, tokens_manifest: dict, run: StepRunner,
                     peak_source: str, resumed: bool) -> None:
    """config.yaml (resolved) and meta.json (provenance), main rank only."""
    cfg, run_dir = ctx.cfg, ctx.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    meta = {
        **code_version(),
        **host_info(),
        "start_time": time.time(),
        "tokenizer_sha256": tok_info["sha256"],
        "dataset_manifest_id": tokens_manifest.get("manifest_id") or tokens_manifest.get("corpus_manifest_sha256"),
        "tokens_manifest": str(cfg.train_tokens_dir / "manifest.json"),
        "params": count_params(cfg.model),
        "flops_per_token": run.flops_per_token,
        "flops_formula": "6*(params - input embedding) + 12*layers*d_model*seq_len",
        "peak_flops": run.peak,
        "peak_flops_source": peak_source,
        "device": str(ctx.device),
        "world_size": ctx.world,
        "expert_parallel": cfg.train.expert_parallel,
        "layout": run.par.dims.sizes() | {"ep": run.par.dims.ep},
        "grad_accum": ctx.accum,
        "mix_stages": [{"name": st.name, "until_tokens": st.until_tokens, "weights": st.weights}
                       for st in ctx.loader.stages],
    }
    meta_path = run_dir / "meta.json"
    if meta_path.exists() and resumed:
        meta = {**read_json(meta_path), "resumed_at": time.time(), **{k: meta[k] for k in ("git_sha", "git_dirty")}}
    atomic_write_json(meta_path, meta)


def _make_runner(ctx: TrainContext, recipe: Recipe, par: Parallelism) -> tuple[StepRunner, str]:
    cfg, device = ctx.cfg, ctx.device
    peak, peak_source = recipe.peak_flops(cfg, device)
    # fp16 without loss scaling is allowed on purpose (accident experiments): small gradients then underflow
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16" and cfg.train.loss_scaling)
    run = StepRunner(
        recipe, autocast_context(cfg, device, ctx.world), scaler,
        params=[p for p in ctx.raw_model.parameters() if p.requires_grad],
        clip=cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"), par=par,
        flops_per_token=flops_per_token(cfg.model, cfg.train.seq_len), peak=peak * ctx.world,
    )
    return run, peak_source


def setup(cfg: ProjectConfig, recipe: Recipe, resume: str,
          given: list[Callback] | None) -> tuple[TrainContext, StepRunner, Path | None, list]:
    """Everything a run needs before its first step; returns (ctx, runner, checkpoint to resume, loader events)."""
    rank, world, local_rank = init_distributed(cfg.train.device)
    device = _pick_device(cfg, local_rank)
    if device.type == "cpu":
        torch.set_num_threads(cfg.train.threads or os.cpu_count() or 1)
    cfg, tok_info, tokens_manifest = _resolve_paths_and_vocab(cfg)
    dims = resolve_dims(cfg, world)  # the device-mesh layout; refuses impossible ones in one line
    accum = _grad_accum(cfg, dims.dp)
    resume_from, skipped = _resume_target(cfg, resume, rank, world)
    ctx, par, events = _build_context(cfg, recipe, tok_info, device, (rank, world, local_rank), accum, dims)
    events[:0] = [("checkpoint_skipped", s.event()) for s in skipped]
    run, peak_source = _make_runner(ctx, recipe, par)
    if ctx.is_main:
        _write_run_files(ctx, tok_info, tokens_manifest, run, peak_source, resume_from is not None)
    ctx.sinks = recipe.build_sinks(ctx) if ctx.is_main else None  # callbacks log their own records through them too
    ctx.callbacks = CallbackList([ctx.checkpointer, *recipe.build_callbacks(ctx, list(given or []))])
    _print_model_line(ctx, run, peak_source)
    return ctx, run, resume_from, events


def _print_model_line(ctx: TrainContext, run: StepRunner, peak_source: str) -> None:
    if not ctx.is_main:
        return
    tc, params = ctx.cfg.train, count_params(ctx.cfg.model)
    console.print(
        f"model: {params['total']:,} params ({params['non_embedding']:,} non-embedding), "
        f"{run.flops_per_token / 1e6:.2f} MFLOP/token; {tc.steps} steps x {tc.global_batch_tokens:,} tokens "
        f"(micro-batch {tc.micro_batch} x {tc.seq_len}, accum {ctx.accum}, world {ctx.world}); "
        f"layout {run.par.dims.describe()}; device {ctx.device}, peak {run.peak / ctx.world / 1e12:.3g} TFLOP/s "
        f"({peak_source})"
    )


def restore(ctx: TrainContext, path: Path) -> None:
    """Continue a run from ``path``: callbacks' state, weights, data position, RNG, counters."""
    loaded = ctx.checkpointer.restore(ctx, path, with_callbacks=True)
    saved_world = loaded["meta"].get("world_size")  # absent in checkpoints written before it was recorded
    if ctx.is_main:
        orphaned = quarantine_future_metrics(ctx.run_dir, ctx.step)
        ctx.event("resume", checkpoint=str(path), orphaned_metric_records=orphaned, format=loaded["format"],
                  saved_world_size=saved_world, world_size=ctx.world)
    # The loader state is global (every rank draws the same rows, keeps every world-th), so it re-splits itself.
    resharded = f", resharded from {saved_world} to {ctx.world} processes" if saved_world not in (None, ctx.world) else ""
    console.print(f"resumed from {path} at step {ctx.step}{resharded}")


# --------------------------------------------------------------------------- one step


def forward_backward(ctx: TrainContext, run: StepRunner) -> tuple[torch.Tensor, dict]:
    """Accumulate gradients over this rank's micro-batches; returns (summed loss, summed logged terms)."""
    loss_sum = torch.zeros((), device=ctx.device)
    if run.par.pipeline is not None:  # the schedule runs this step's micro-batches (train/pipeline.py)
        return run.par.pipeline.forward_backward(ctx)
    term_sums: dict[str, torch.Tensor] = {}  # extra loss terms (model heads, callbacks), each logged
    for micro in range(ctx.accum):
        batch = ctx.loader.next_batch().to(ctx.device)
        with grad_sync_context(ctx.model, sync=micro == ctx.accum - 1), run.par.loss_context(batch):
            with run.amp:
                out = ctx.model(batch.inputs, batch.targets, doc_ids=batch.doc_ids)
                logits, loss = out[0], out[1]
                terms = dict(out[2]) if len(out) > 2 else {}
                extra = ctx.callbacks.extra_losses(ctx, batch, logits)
                if extra and "ce_loss" not in terms:
                    terms["ce_loss"] = loss.detach()
                for name, term in extra.items():
                    loss = loss + term
                    terms[name] = term.detach()
                for name, value in terms.items():
                    term_sums[name] = term_sums.get(name, 0) + value
            run.scaler.scale(loss / ctx.accum).backward()
        loss_sum += loss.detach()
    return loss_sum, term_sums


def _clip_and_reduce(ctx: TrainContext, run: StepRunner, loss_sum: torch.Tensor, term_sums: dict):
    """(grad norm after unscaling and clipping, loss averaged over micro-batches and ranks)."""
    run.par.finish_grads()  # e.g. expert slices: not reduced by data parallelism
    run.scaler.unscale_(ctx.optimizer)
    grad_norm = run.par.clip_grad_norm_(run.params, run.clip)
    loss_value = loss_sum / ctx.accum
    if ctx.world > 1:
        import torch.distributed as dist

        dist.all_reduce(loss_value, op=dist.ReduceOp.AVG)
        for v in term_sums.values():
            dist.all_reduce(v, op=dist.ReduceOp.AVG)
    return grad_norm, loss_value


def train_step(ctx: TrainContext, run: StepRunner) -> dict:
    """One optimizer step (or a skipped one, if a callback says so); returns the step's metrics."""
    tc = ctx.cfg.train
    run.step_start = {"loader": ctx.loader.state_dict(), "rng": rng_state(ctx.device), "data_batches": ctx.data_batches}
    lr = lr_at(ctx.step, tc.steps, ctx.cfg.optim)
    set_lr(ctx.optimizer, lr)
    loss_sum, term_sums = forward_backward(ctx, run)
    ctx.data_batches += 1
    grad_norm, loss_value = _clip_and_reduce(ctx, run, loss_sum, term_sums)
    metrics = {
        "kind": "train",
        "step": ctx.step + 1,
        "tokens": ctx.tokens_seen + tc.global_batch_tokens,
        "loss": loss_value.detach(),
        "lr": lr,
        "grad_norm": grad_norm.detach(),
        "time": time.time(),
        **{name: (v.detach() if isinstance(v, torch.Tensor) else float(v)) / ctx.accum for name, v in term_sums.items()},
    }
    host = host_step(ctx, run, ctx.step + 1)
    if host:
        read_metrics(ctx, run, metrics)  # the step's one wait for the device; other steps never wait
    if run.scaler.is_enabled():
        metrics["loss_scale"] = float(run.scaler.get_scale())
    if tc.precision == "fp16":
        metrics["overflow"] = not math.isfinite(metrics["grad_norm"])
    ctx.skip_step = False
    ctx.callbacks.on_after_backward(ctx, metrics)
    if isinstance(ctx.skip_step, torch.Tensor):  # decided on the device (a guard on a step read later)
        metrics["skipped"] = ctx.skip_step
        ctx.checkpointer.before_update()
        run.step_start["updated"] = True  # from here the weights may be past step_start: never save it
        _step_unless(ctx, run, ctx.skip_step)
    elif ctx.skip_step:
        metrics["skipped"] = True
    else:
        ctx.checkpointer.before_update()
        run.step_start["updated"] = True  # from here the weights may be past step_start: never save it
        run.scaler.step(ctx.optimizer)  # a plain optimizer.step() unless loss scaling (then skipped on overflow)
    run.scaler.update()
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.step += 1
    ctx.tokens_seen += tc.global_batch_tokens
    run.step_start = None  # the live state now matches ctx.step again
    ctx.callbacks.on_step_end(ctx, metrics)
    if not host:
        run.unread.append(metrics)
    return metrics


def host_step(ctx: TrainContext, run: StepRunner, step: int) -> bool:
    """Whether ``step`` reads its metrics on the host: a log, checkpoint or validation step, the last one, fp16
    loss scaling, or a callback that needs numbers every step. Other steps keep the loss, the grad norm and the
    guard's decision on the device and never wait for it (as torchtitan reads its metrics once per log step)."""
    tc = ctx.cfg.train
    return (step % tc.log_every == 0 or step == tc.steps or step % tc.val_every == 0
            or step % ctx.cfg.checkpoint.every == 0 or run.scaler.is_enabled() or ctx.callbacks.needs_host_metrics)


def read_metrics(ctx: TrainContext, run: StepRunner, current: dict | None = None) -> None:
    """Turn the device tensors of the unread step records (and ``current``) into numbers in one host sync,
    then let the callbacks settle what they decided on the device for the earlier ones (``on_metrics_read``)."""
    records = run.unread + ([current] if current is not None else [])
    slots = [(r, k) for r in records for k, v in r.items() if isinstance(v, torch.Tensor)]
    if slots:
        values = torch.stack([r[k].detach().float().reshape(()) for r, k in slots]).tolist()
        for (r, k), v in zip(slots, values):
            r[k] = bool(v) if k == "skipped" else v
        for r in records:
            if r.get("skipped") is False:
                del r["skipped"]
    unread, run.unread = run.unread, []
    if unread:
        ctx.callbacks.on_metrics_read(ctx, unread)


def _step_unless(ctx: TrainContext, run: StepRunner, skip: torch.Tensor) -> None:
    """The optimizer update unless ``skip`` (a device bool). Fused Adam/AdamW skip it inside their kernel (the
    ``found_inf`` flag loss scaling uses), so nothing waits; other optimizers read the flag (one host sync)."""
    opt = ctx.optimizer
    fused = isinstance(opt, torch.optim.Adam) and all(g.get("fused") for g in opt.param_groups)
    if fused and not run.scaler.is_enabled():
        opt.found_inf = skip.to(torch.float32)
        try:
            opt.step()
        finally:
            del opt.found_inf
    elif not bool(skip):
        run.scaler.step(opt)


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _mfu(tokens_per_s: float, flops_per_token: float, peak: float) -> float:
    """Model FLOPs utilization; NaN when the peak is unknown (same rule as monitor.flops.mfu)."""
    if not peak or peak <= 0 or not math.isfinite(peak):
        return float("nan")
    return float(tokens_per_s) * float(flops_per_token) / float(peak)


def log_step(ctx: TrainContext, run: StepRunner, metrics: dict) -> None:
    """On log steps: throughput, MFU and loader shares into ``metrics``, then the sinks and the console."""
    tc = ctx.cfg.train
    if ctx.step % tc.log_every == 0 or ctx.step == tc.steps:
        now = time.perf_counter()
        run.tokens_per_s = (ctx.tokens_seen - run.tokens_last) / max(now - run.t_last, 1e-9)
        run.mfu = _mfu(run.tokens_per_s, run.flops_per_token, run.peak)
        eta = (now - run.t_start) / max(ctx.step - run.start_step, 1) * (tc.steps - ctx.step)
        metrics.update(tokens_per_s=run.tokens_per_s, mfu=run.mfu, elapsed_s=now - run.t_start, **ctx.loader.metrics())
        run.t_last, run.tokens_last = now, ctx.tokens_seen
        if ctx.is_main:
            ctx.sinks.log(metrics)
            console.print(
                f"step {ctx.step:>6}/{tc.steps} | loss {metrics['loss']:.4f} | lr {metrics['lr']:.2e} | "
                f"gnorm {metrics['grad_norm']:.3f} | {run.tokens_per_s:,.0f} tok/s | "
                f"MFU {100 * run.mfu:.1f}% | eta {_fmt_duration(eta)}"
            )
    ctx.history.append(metrics)


# --------------------------------------------------------------------------- step boundary


def validate(ctx: TrainContext, run: StepRunner) -> dict:
    """The recipe's validation on every rank (sharded forwards are collective); logged on the main rank."""
    val = run.recipe.validate(ctx)
    if ctx.is_main:
        ctx.sinks.log(val)
        loss = val.get("val_loss")
        shown = "n/a (no held-out tokens scored)" if loss is None else f"{loss:.4f}"
        if ctx.step == 0:
            console.print(f"step {0:>6}/{ctx.cfg.train.steps} | val_loss {shown} (before training)")
        else:
            console.print(f"step {ctx.step:>6}/{ctx.cfg.train.steps} | val_loss {shown}")
            ctx.callbacks.on_validation(ctx, val)
            ctx.event("mix_shares", stages=ctx.loader.shares())
        run.first_val = loss if run.first_val is None else run.first_val
        run.final_val = loss if ctx.step else run.final_val
    ctx.model.train()
    return val


def _any_rank(ctx: TrainContext, *flags: bool) -> list[bool]:
    """Each flag OR-ed over the ranks (one collective), so every rank takes the same guard action."""
    if ctx.world <= 1:
        return list(flags)
    import torch.distributed as dist

    t = torch.tensor([1 if f else 0 for f in flags], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def pause(ctx: TrainContext, request: dict | None, already_saved: bool = False) -> None:
    """Checkpoint (unless this step just was), record the pause, and stop with ``TrainingPaused``."""
    request = request or {"rule": "pause", "message": "requested on another rank"}
    ctx.pause_request = None
    path = None if already_saved else ctx.checkpointer.save(ctx)
    ctx.checkpointer.wait()  # complete before the process exits (and before looking up an async save)
    path = path or ckpt.latest_checkpoint(ctx.run_dir)
    ctx.event("pause", rule=request["rule"], message=request["message"], checkpoint=str(path))
    raise TrainingPaused(f"training paused at step {ctx.step} by guard rule {request['rule']}: {request['message']}; "
                         "inspect the run, then continue with `pretrainlab train ... --resume auto`", checkpoint=str(path))


def interrupt(ctx: TrainContext, stop: StopSignals, already_saved: bool = False) -> None:
    """Checkpoint this step (unless just done), record it, and stop with ``TrainingInterrupted`` (train/interrupts.py)."""
    if not already_saved:
        ctx.checkpointer.save(ctx)
    ctx.checkpointer.wait()  # complete before the process exits
    path = ckpt.checkpoint_root(ctx.run_dir) / ckpt.step_dir_name(ctx.step)
    name = stop.name if stop.requested else "a stop signal on another rank"
    ctx.event("interrupted", signal=name, checkpoint=str(path))
    raise TrainingInterrupted(f"{name}: stopped at step {ctx.step} with checkpoint {path}; "
                              "continue with `pretrainlab train ... --resume auto`",
                              exit_code=stop.exit_code if stop.requested else EXIT_PREEMPTED, checkpoint=str(path))


def step_boundary(ctx: TrainContext, run: StepRunner, stop: StopSignals | None = None) -> None:
    """After a step: a guard's rollback, else validation when due, ``on_step_boundary`` (checkpoint), a guard's
    pause, a stop signal. The requests are OR-ed over the ranks in one collective, so every rank acts alike."""
    tc = ctx.cfg.train
    roll_back, pause_now, stop_now = _any_rank(ctx, ctx.rollback_request is not None, ctx.pause_request is not None,
                                               stop is not None and stop.requested)
    if (roll_back or stop_now) and run.unread:  # settle the callbacks' state before it is acted on or saved
        read_metrics(ctx, run)
    if roll_back:
        request = ctx.rollback_request or {"reason": "requested on another rank",
                                           "skip_batches": ctx.cfg.guard.skip_batches}
        ctx.rollback_request = None
        ctx.checkpointer.rollback(ctx, request["reason"], request["skip_batches"], request.get("resume_at_batch"))
        run.t_last, run.tokens_last = time.perf_counter(), ctx.tokens_seen
        if stop_now:  # keep the rollback (data skipped, counters) in a checkpoint of its own step
            interrupt(ctx, stop)
        return
    t_pause = time.perf_counter()
    last = ctx.step == tc.steps
    val = validate(ctx, run) if ctx.step % tc.val_every == 0 or last else None
    ctx.callbacks.on_step_boundary(ctx, val)
    if pause_now and not last:
        pause(ctx, ctx.pause_request, already_saved=ctx.checkpointer.due(ctx))
    if stop_now and not last:
        interrupt(ctx, stop, already_saved=ctx.checkpointer.due(ctx))
    run.t_last += time.perf_counter() - t_pause  # validation and saving don't count against throughput


# --------------------------------------------------------------------------- entry point


def _save_interrupted(ctx: TrainContext, run: StepRunner) -> None:
    """A KeyboardInterrupt raised mid-step (not by a stop signal, which waits for the step boundary)."""
    if run.step_start and run.step_start.get("updated"):  # between the update and the step counter
        console.print(f"interrupted during the update of step {ctx.step + 1}: not saved (its state is neither "
                      f"step {ctx.step} nor {ctx.step + 1}); --resume auto continues from the newest checkpoint")
        return
    if ctx.step > run.start_step:
        path = ctx.checkpointer.save(ctx, run.step_start)
        ctx.checkpointer.wait()
        ctx.event("interrupted", checkpoint=str(path))
        console.print(f"interrupted: saved {path}; continue with --resume auto")


def _summary(ctx: TrainContext, run: StepRunner) -> dict:
    seconds = time.perf_counter() - run.t_start
    ctx.event("end", seconds=seconds)
    return {
        "run_dir": str(ctx.run_dir),
        "steps": ctx.step,
        "tokens": ctx.tokens_seen,
        "seconds": seconds,
        "tokens_per_s": run.tokens_per_s,
        "mfu": run.mfu,
        "first_val_loss": run.first_val,
        "final_val_loss": run.final_val,
        "losses": [m["loss"] for m in ctx.history],
    }


def train(cfg: ProjectConfig, recipe: Recipe, resume: str = "auto", callbacks: list[Callback] | None = None) -> dict:
    """Train per ``cfg`` with the parts ``recipe`` chose; ``resume``: "auto", "never", or a checkpoint path.

    Most callers want ``pretrainlab.recipes.train(cfg)``, which builds the standard recipe from the config.
    """
    ctx, run, resume_from, loader_events = setup(cfg, recipe, resume, callbacks)
    try:
        if resume_from is not None:
            restore(ctx, resume_from)
        else:
            ctx.event("start", params=count_params(ctx.cfg.model)["total"])
        run.start_step, run.tokens_last = ctx.step, ctx.tokens_seen
        for name, fields in loader_events:
            ctx.event(name, **fields)
        ctx.callbacks.on_train_start(ctx)
        run.t_start = run.t_last = time.perf_counter()
        if ctx.step == 0:
            validate(ctx, run)  # the starting point every later validation is compared with
        ctx.model.train()
        with StopSignals(ctx.cfg.train.stop_signals) as stop:  # handlers only record; the boundary acts
            while ctx.step < ctx.cfg.train.steps:
                metrics = train_step(ctx, run)
                log_step(ctx, run, metrics)
                step_boundary(ctx, run, stop)
    except KeyboardInterrupt:
        _save_interrupted(ctx, run)
        raise
    finally:
        if ctx.sinks is not None:
            ctx.sinks.close()
    ctx.callbacks.on_train_end(ctx)  # the checkpointer (first) waits for in-flight saves
    return _summary(ctx, run)
