"""Build a plan: FLOPs, time, cost, memory, checkpoint and data I/O for one configuration.

``make_plan(cfg)`` returns a JSON-ready dict (the single source for the table,
the JSON output and the HTML page). Impossible settings raise ConfigError with
the fix; the formulas themselves live in ``formulas.py``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from pretrainlab.config import ProjectConfig, load_config
from pretrainlab.errors import ConfigError
from pretrainlab.fsio import atomic_write_text
from pretrainlab.plan import formulas as F
from pretrainlab.plan.calibrate import RunMeasurement, measure_run
from pretrainlab.plan.hardware import Hardware, resolve_hardware
from pretrainlab.plan.model_spec import ModelSpec, given_counts, spec_from_model_config, spec_from_preset
from pretrainlab.plan.render import print_table, to_json, write_html

PRESET_SEQ_LEN = 4096
PRESET_GLOBAL_BATCH = 4 * 1024 * 1024  # 4M tokens (1024 rows of 4096)
PRESET_MICRO_BATCH = 1
DEFAULT_MFU = 0.4
DEFAULT_HARDWARE = "h100-sxm"
_RUN_GPU_PRESETS = {"H100 SXM": "h100-sxm", "H100 PCIe": "h100-pcie", "H200": "h200", "A100": "a100-80gb"}


def load_plan_config(path: str | Path | None, overrides: list[str]) -> ProjectConfig:
    """The config to plan: the YAML given, else the --from-run run's own config.yaml, plus overrides."""
    cfg = load_config(path, overrides)
    if path is None and cfg.plan.from_run is not None and cfg.plan.model_preset is None:
        run_cfg = Path(cfg.plan.from_run) / "config.yaml"
        if run_cfg.exists():
            try:
                cfg = load_config(run_cfg, overrides)
            except ConfigError as err:
                raise ConfigError(f"{err} (the run's own config; plan another model with -c CONFIG or "
                                  "--model-preset)") from None
    return cfg


def make_plan(cfg: ProjectConfig) -> dict:
    pc = cfg.plan
    measured: RunMeasurement | None = None
    if pc.from_run is not None:
        measured = measure_run(pc.from_run)
        if not F.is_positive_finite(measured.mfu):
            raise ConfigError(f"--from-run {pc.from_run}: measured MFU is not positive; check the run's peak_flops")

    # ---- model and batch geometry
    # Given counts need no vocabulary; without one the model section is no architecture to plan, and the
    # plan goes by parameter count alone (batch geometry and tokens default as for a preset).
    by_count = pc.model_preset is None and cfg.model.vocab_size is None and pc.total_params is not None
    if pc.model_preset is not None or by_count:
        spec = spec_from_preset(pc.model_preset, pc.total_params, pc.active_params) if not by_count else None
        seq = pc.seq_len or PRESET_SEQ_LEN
        micro = pc.micro_batch or PRESET_MICRO_BATCH
        gbt = pc.global_batch_tokens or PRESET_GLOBAL_BATCH
    else:
        spec = spec_from_model_config(cfg.model, f"model section ({cfg.run.name})", pc.total_params, pc.active_params)
        seq = pc.seq_len or cfg.train.seq_len
        micro = pc.micro_batch or cfg.train.micro_batch
        gbt = pc.global_batch_tokens or cfg.train.global_batch_tokens
    counts = spec.counts() if spec is not None else given_counts(pc.total_params, pc.active_params)

    # ---- hardware
    mfu = measured.mfu if measured else (pc.mfu if pc.mfu is not None else DEFAULT_MFU)
    devices = pc.devices or (measured.world_size if measured else 1)
    hw = _hardware(pc, measured)

    # ---- parallelism
    par = _parallelism(spec, devices, pc.tensor_parallel, pc.pipeline_parallel, pc.expert_parallel,
                       pc.data_parallel_shard)
    dp = par["data_parallel"]
    rows_per_step = gbt / seq
    if rows_per_step != int(rows_per_step) or int(rows_per_step) % (micro * dp):
        raise ConfigError(
            f"global batch of {gbt:,.0f} tokens = {rows_per_step:g} rows of {seq} is not divisible by "
            f"micro_batch x data-parallel ({micro} x {dp}); change plan.global_batch_tokens, plan.micro_batch "
            "or the device count"
        )
    m = int(rows_per_step) // (micro * dp)  # micro-batches per pipeline per step (gradient accumulation)

    # ---- compute and time
    notes: list[str] = []
    tokens = pc.tokens
    tokens_source = "plan.tokens"
    if tokens is None:
        if spec is not None and pc.model_preset is None:
            tokens, tokens_source = float(cfg.train.steps * cfg.train.global_batch_tokens), "train.steps x global_batch_tokens"
        else:
            tokens, tokens_source = F.chinchilla_tokens_rule(counts["total"]), "20 x parameters (Chinchilla)"
    fpt_6n = F.flops_per_token_6n(counts["matmul_active"])
    # 12*L*d*s needs the shape; by parameter count alone 6N is the only FLOP count there is.
    fpt_attn = F.attention_flops_per_token(spec.n_layers, spec.d_model, seq) if spec is not None else None
    formula = pc.flops_formula if spec is not None else "6n"
    fpt = fpt_6n + (fpt_attn if formula == "6n+attention" else 0.0)
    total_flops = fpt * tokens
    if pc.tokens_per_sec_per_device is not None:  # measured throughput: the MFU is what it implies
        tokens_per_s = devices * pc.tokens_per_sec_per_device
        cluster = tokens_per_s * fpt
        mfu = cluster / (devices * hw.peak_flops)
        if mfu > 1:
            notes.append(f"{pc.tokens_per_sec_per_device:,.0f} tokens/s per device means {mfu:.0%} of the "
                         f"{hw.peak_flops:.3g} FLOP/s peak at {fpt:.3g} FLOPs/token: check the throughput, "
                         "hardware and precision")
    else:
        cluster = devices * hw.peak_flops * mfu
        tokens_per_s = cluster / fpt
    secs = tokens / tokens_per_s  # = total FLOPs / effective cluster FLOP/s
    days = secs / 86400
    wall_low, wall_high = secs * pc.buffer_low, secs * pc.buffer_high
    dev_hours = (devices * wall_low / 3600, devices * wall_high / 3600)
    cost = None
    if pc.price_per_device_hour is not None:
        cost = {"pure_compute": devices * secs / 3600 * pc.price_per_device_hour,
                "low": dev_hours[0] * pc.price_per_device_hour, "high": dev_hours[1] * pc.price_per_device_hour,
                "per_hour": devices * pc.price_per_device_hour}
    steps = tokens / gbt
    step_s = gbt / tokens_per_s

    if spec is None:
        notes.append("planned by parameter count (plan.total_params without an architecture): FLOPs are 6N only, "
                     "memory has no activations; give -c CONFIG with model.vocab_size, or --model-preset, for both")
    compute = {
        "formula": formula,
        "formula_text": "6N + 12*L*d*s" if formula == "6n+attention" else "6N",
        "n_for_6n": counts["matmul_active"],
        "n_for_6n_means": ("active parameters given (plan.active_params)" if counts["derived_from"] != "architecture"
                           else "active parameters in matmuls (total active minus the input embedding)"),
        "flops_per_token_6n": fpt_6n,
        "flops_per_token_attention": fpt_attn,
        "flops_per_token_6n_plus_attention": fpt_6n + fpt_attn if fpt_attn is not None else None,
        "flops_per_token": fpt,
        "tokens": tokens,
        "tokens_source": tokens_source,
        "total_flops": total_flops,
        "peak_flops_per_device": hw.peak_flops,
        "cluster_peak_flops": devices * hw.peak_flops,
        "mfu": mfu,
        "mfu_source": (f"measured in {measured.run_dir}" if measured else "implied by plan.tokens_per_sec_per_device"
                       if pc.tokens_per_sec_per_device is not None else "plan.mfu"),
        "throughput_source": ("plan.tokens_per_sec_per_device (measured)" if pc.tokens_per_sec_per_device is not None
                              else "peak x MFU"),
        "effective_flops": cluster,
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_device": tokens_per_s / devices,
        "steps": steps,
        "step_seconds": step_s,
    }
    time_ = {
        "pure_compute_seconds": secs,
        "pure_compute_days": days,
        "buffer": [pc.buffer_low, pc.buffer_high],
        "wall_seconds": [wall_low, wall_high],
        "wall_days": [wall_low / 86400, wall_high / 86400],
        "device_hours_pure": devices * secs / 3600,
        "device_hours": list(dev_hours),
        "cost": cost,
    }
    if cost is None:
        notes.append("no cost: set plan.price_per_device_hour (--price-per-device-hour)")

    if pc.recompute is None:
        ac = pc.model_preset is None and getattr(cfg.train, "activation_checkpointing", False)
        pc = pc.model_copy(update={"recompute": "full" if ac else "none"})
    memory = (_memory(spec, counts, hw, pc, par, seq, micro, m, int(rows_per_step)) if spec is not None
              else _memory_by_count(counts, hw, pc, par))
    if memory["fits"] is False and spec is None:
        notes.append(f"does not fit: the model states alone take {memory['total_bytes'] / 1e9:.1f} GB of "
                     f"{memory['usable_bytes'] / 1e9:.1f} GB usable; raise zero_stage or tensor/pipeline parallelism")
    elif memory["fits"] is False:
        notes.append(
            f"does not fit: {memory['total_bytes'] / 1e9:.1f} GB needed of {memory['usable_bytes'] / 1e9:.1f} GB usable; "
            + ("raise zero_stage, tensor/pipeline parallelism or recompute" if memory["max_micro_batch"] == 0
               else f"micro_batch <= {memory['max_micro_batch']} fits")
        )
    bubble = F.pipeline_bubble(par["pipeline_parallel"], m)
    par.update(micro_batches_per_step=m, pipeline_bubble=bubble,
               bubble_fraction_of_step=bubble / (1 + bubble))
    if bubble > 0.1:
        notes.append(f"pipeline bubble (p-1)/m = {bubble:.0%} of compute time; the MFU is taken as end to end, so "
                     "lower it or raise the micro-batches per step")

    ckpt = _checkpoint(counts, pc, cfg, step_s, steps)
    if ckpt["overhead_fraction"] > 0.05:
        notes.append(f"synchronous checkpoint writes cost {ckpt['overhead_fraction']:.0%} of training time; "
                     "write asynchronously, checkpoint less often or get faster storage")
    io = _io(spec, pc, tokens_per_s)
    chin = _chinchilla(spec, counts, tokens)
    if spec is not None and spec.is_moe:
        notes.append("Chinchilla fit is for dense models; for an MoE it is shown with total parameters as a loose prior")
    energy = _energy(hw, pc, devices, secs)
    if measured and measured.device == "cpu" and not hw.name.startswith("run device"):
        notes.append("the MFU was measured on a CPU against its measured matmul rate; it does not carry over to "
                     "GPUs: calibrate with a short run on the target device")
    if measured:
        notes.append(
            f"calibrated from {measured.run_dir}: MFU {measured.mfu:.1%} (median of {measured.intervals} logged "
            f"intervals), {measured.tokens_per_s_per_device:,.0f} tokens/s per device on {measured.device}"
        )

    return {
        "model": {
            "name": spec.name if spec is not None else "by parameter count",
            "architecture": spec.to_dict() if spec is not None else None,
            "total_params": counts["total"],
            "active_params": counts["active"],
            "embedding_params": counts["embedding"],
            "params_source": counts["derived_from"],
            "seq_len": seq,
            "micro_batch": micro,
            "global_batch_tokens": gbt,
        },
        "hardware": {**hw.to_dict(), "devices": devices,
                     "precision": "as in the run" if hw.name.startswith("run device") else pc.precision},
        "parallelism": par,
        "compute": compute,
        "time": time_,
        "memory": memory,
        "checkpoint": ckpt,
        "io": io,
        "chinchilla": chin,
        "energy": energy,
        "calibration": measured.to_dict() if measured else None,
        "notes": notes,
    }


# ---------------------------------------------------------------------------- pieces


def _hardware(pc, measured: RunMeasurement | None) -> Hardware:
    if measured and pc.hardware is None and pc.peak_tflops is None:
        preset = next((v for k, v in _RUN_GPU_PRESETS.items() if f"of {k}" in measured.peak_source), None)
        if preset and measured.device.startswith("cuda"):
            return resolve_hardware(preset, pc.precision, None, pc.device_memory_gb, pc.device_power_w)
        memory_gb = pc.device_memory_gb or _host_memory_bytes() / 1e9
        return Hardware(f"run device ({measured.device})", measured.peak_flops_per_device,
                        f"from the run: {measured.peak_source}", memory_gb * 1e9, None, None,
                        pc.device_power_w or (700.0 if measured.device.startswith("cuda") else 100.0))
    return resolve_hardware(pc.hardware or DEFAULT_HARDWARE, pc.precision, pc.peak_tflops, pc.device_memory_gb, pc.device_power_w)


def _host_memory_bytes() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16e9


def _parallelism(spec: ModelSpec | None, devices: int, t: int, p: int, e: int, shard: int | None = None) -> dict:
    if devices % (t * p):
        raise ConfigError(
            f"{devices} devices are not divisible by tensor x pipeline parallel ({t} x {p}); "
            "choose a device count that is a multiple of their product"
        )
    dp = devices // (t * p)
    shard = dp if shard is None else shard
    if dp % shard:
        raise ConfigError(f"data_parallel_shard={shard} must divide the data-parallel degree {dp} (= devices / "
                          "(tensor x pipeline)); pick a divisor of it")
    if spec is None:  # by parameter count: no heads, layers or experts to check against
        if e > 1:
            raise ConfigError(f"expert_parallel={e} needs the experts of an architecture: give -c CONFIG with "
                              "model.vocab_size or --model-preset, or set expert_parallel=1")
        return {"devices": devices, "tensor_parallel": t, "pipeline_parallel": p, "data_parallel": dp,
                "data_parallel_shard": shard, "expert_parallel": 1, "expert_data_parallel": dp}
    if spec.n_heads % t:
        raise ConfigError(f"tensor_parallel={t} must divide the {spec.n_heads} attention heads; pick a divisor")
    if p > spec.n_layers:
        raise ConfigError(f"pipeline_parallel={p} exceeds the {spec.n_layers} layers; use at most {spec.n_layers} stages")
    if e > 1:
        if not spec.is_moe:
            raise ConfigError(f"expert_parallel={e} needs an MoE model; set it to 1 for a dense model")
        if e > spec.n_experts or spec.n_experts % e:
            raise ConfigError(
                f"expert_parallel={e} must divide the {spec.n_experts} experts (and not exceed them); "
                f"pick a divisor of {spec.n_experts}"
            )
        if dp % e:
            raise ConfigError(
                f"expert_parallel={e} must divide the data-parallel degree {dp} (= devices / (tensor x pipeline)); "
                "change expert_parallel or the device count"
            )
    return {"devices": devices, "tensor_parallel": t, "pipeline_parallel": p, "data_parallel": dp,
            "data_parallel_shard": shard, "expert_parallel": e, "expert_data_parallel": dp // e}


def _stage_params(spec: ModelSpec, counts: dict, p: int) -> dict[str, float]:
    """Parameters held by the heaviest pipeline stage: non-expert and expert, before TP/EP/ZeRO sharding."""
    arch = spec.counts() if counts["derived_from"] != "architecture" else counts
    if counts["derived_from"] != "architecture":  # given counts: scale the architecture's split to them
        scale = counts["total"] / arch["total"]
    else:
        scale = 1.0
    d, v = spec.d_model, spec.vocab_size
    per_layer = arch["total"] - arch["experts"] - v * d * (1 if spec.tie_embeddings else 2) - d
    per_layer /= spec.n_layers  # non-expert parameters of one layer (attention, norms, dense MLP or router/shared)
    layers = math.ceil(spec.n_layers / p)
    moe_layers = math.ceil(spec.moe_layers / p) if spec.is_moe else 0
    ends = v * d * (1 if spec.tie_embeddings else 2) + d if p == 1 else v * d + d  # first/last stage: embed or head
    experts = moe_layers * spec.n_experts * spec.expert_params()
    moe_fixed = moe_layers * (3 * d * spec.shared_ffn + d * spec.n_experts)  # router and shared experts
    return {"non_expert": (layers * per_layer + ends) * scale, "experts": experts * scale,
            "moe_fixed": moe_fixed * scale, "layer_non_expert": per_layer * scale}


def _model_states(stage: dict, pc, par: dict, zero: int, expert_zero: int) -> tuple[dict, float]:
    """(weights/gradients/optimizer bytes, parameters) per device of the heaviest stage under TP, EP and ZeRO.

    ZeRO shards over the shard group (all data-parallel ranks, or HSDP's dp_shard), the routed experts over
    that group's ranks per expert slice; ``pc.moe_tensor_parallel`` says whether TP splits the MoE MLPs.
    """
    t, e, shard = par["tensor_parallel"], par["expert_parallel"], par["data_parallel_shard"]
    mt = t if pc.moe_tensor_parallel else 1
    dense = (stage["non_expert"] - stage["moe_fixed"]) / t + stage["moe_fixed"] / mt
    experts = stage["experts"] / (mt * e)
    a = F.model_state_bytes(dense, pc.optimizer_scheme, zero, shard)
    b = F.model_state_bytes(experts, pc.optimizer_scheme, expert_zero, max(1, shard // e))
    return {k: a[k] + b[k] for k in a}, dense + experts


def _memory(spec: ModelSpec, counts: dict, hw: Hardware, pc, par: dict, seq: int, micro: int, m: int,
            rows: int) -> dict:
    t, p, e, dp = par["tensor_parallel"], par["pipeline_parallel"], par["expert_parallel"], par["data_parallel"]
    sp = pc.sequence_parallel and t > 1
    stage = _stage_params(spec, counts, p)
    ez = pc.zero_stage if pc.expert_zero_stage is None else pc.expert_zero_stage
    states, params_per_device = _model_states(stage, pc, par, pc.zero_stage, ez)
    # ZeRO-3/FSDP gathers each layer's weights (2-byte compute copy) for compute, one layer ahead (prefetch).
    layer_experts = spec.n_experts * spec.expert_params() / ((t if pc.moe_tensor_parallel else 1) * e) \
        if spec.is_moe else 0.0
    transient = 2 * 2.0 * ((stage["layer_non_expert"] / t if pc.zero_stage >= 3 else 0.0)
                           + (layer_experts if ez >= 3 else 0.0))
    layers_per_stage = math.ceil(spec.n_layers / p)

    def activations(b: int) -> tuple[float, dict]:
        in_flight = F.pipeline_in_flight(p, rows // (b * dp) if rows >= b * dp else 1)
        layer = _layer_act(spec, pc, seq, b, t, sp, pc.recompute)
        layers_total = layer * layers_per_stage * in_flight
        extra = _layer_act(spec, pc, seq, b, t, sp, "none") if pc.recompute == "full" else 0.0
        logits = F.logits_bytes(seq, b, spec.vocab_size, t)
        # Pipelines: the first stage holds p micro-batches of layers, the last one plus the logits.
        if p == 1:
            total = layers_total + extra + logits
        else:
            total = max(layers_total + extra, layer * layers_per_stage + extra + logits)
        return total, {"per_layer": layer, "layers": layers_total, "recompute_working_layer": extra,
                       "logits": logits, "in_flight_micro_batches": in_flight}

    act, act_parts = activations(micro)
    # fp32 weights under bf16 autocast: each linear keeps a bf16 copy of its weight until backward.
    autocast_copies = 2.0 * params_per_device if pc.optimizer_scheme == "fp32-master" and pc.zero_stage < 3 else 0.0
    fixed = sum(states.values()) + transient + autocast_copies
    usable = hw.memory_bytes * (1 - pc.memory_reserve)
    total = fixed + act
    lo, hi = 0, max(1, rows // dp)
    while lo < hi:  # largest micro-batch that fits (activation memory grows with b)
        mid = (lo + hi + 1) // 2
        if fixed + activations(mid)[0] <= usable:
            lo = mid
        else:
            hi = mid - 1
    return {
        "params_per_device": params_per_device,
        "weights_bytes": states["weights"],
        "gradients_bytes": states["gradients"],
        "optimizer_bytes": states["optimizer"],
        "model_states_bytes": sum(states.values()),
        "zero3_gather_bytes": transient,
        "autocast_weight_copies_bytes": autocast_copies,
        "activations_bytes": act,
        "activations": act_parts,
        "zero_stage": pc.zero_stage,
        "activation_formula": pc.activation_formula,
        "recompute": pc.recompute,
        "total_bytes": total,
        "device_bytes": hw.memory_bytes,
        "usable_bytes": usable,
        "fits": total <= usable,
        "max_micro_batch": lo,
        "by_zero_stage": {
            str(z): sum(_model_states(stage, pc, par, z, z if pc.expert_zero_stage is None else ez)[0].values())
            for z in range(4)
        },
        "optimizer_scheme": pc.optimizer_scheme,
        "bytes_per_param": dict(zip(("weights", "gradients", "optimizer"), F.OPTIMIZER_SCHEMES[pc.optimizer_scheme])),
    }


def _memory_by_count(counts: dict, hw: Hardware, pc, par: dict) -> dict:
    """Model states of N parameters split evenly over tensor x pipeline ranks; activations need an architecture."""
    t, p, dp = par["tensor_parallel"], par["pipeline_parallel"], par["data_parallel_shard"]
    per_device = counts["total"] / (t * p)
    states = F.model_state_bytes(per_device, pc.optimizer_scheme, pc.zero_stage, dp)
    autocast_copies = 2.0 * per_device if pc.optimizer_scheme == "fp32-master" and pc.zero_stage < 3 else 0.0
    usable = hw.memory_bytes * (1 - pc.memory_reserve)
    total = sum(states.values()) + autocast_copies  # a lower bound: no activations, no ZeRO-3 gather buffers
    return {
        "params_per_device": per_device,
        "weights_bytes": states["weights"],
        "gradients_bytes": states["gradients"],
        "optimizer_bytes": states["optimizer"],
        "model_states_bytes": sum(states.values()),
        "zero3_gather_bytes": None,
        "autocast_weight_copies_bytes": autocast_copies,
        "activations_bytes": None,
        "activations": None,
        "zero_stage": pc.zero_stage,
        "activation_formula": None,
        "recompute": pc.recompute,
        "total_bytes": total,
        "total_is_lower_bound": True,
        "device_bytes": hw.memory_bytes,
        "usable_bytes": usable,
        "fits": False if total > usable else None,  # unknown until activations are counted
        "max_micro_batch": None,
        "by_zero_stage": {str(z): sum(F.model_state_bytes(per_device, pc.optimizer_scheme, z, dp).values())
                          for z in range(4)},
        "optimizer_scheme": pc.optimizer_scheme,
        "bytes_per_param": dict(zip(("weights", "gradients", "optimizer"), F.OPTIMIZER_SCHEMES[pc.optimizer_scheme])),
    }


def _layer_act(spec: ModelSpec, pc, s: int, b: int, t: int, sp: bool, recompute: str) -> float:
    """Average per-layer activation bytes over the model's dense and MoE layers."""
    h, a = spec.d_model, spec.n_heads
    if pc.activation_formula == "gpt":
        # A flash kernel keeps no s*s scores: the same saving as selective recomputation of the core.
        eff = "selective" if (recompute == "none" and pc.flash_attention) else recompute
        return F.layer_activation_bytes_gpt(s, b, h, a, t, sp, eff)
    kv = spec.kv_heads / spec.n_heads
    impl = pc.activation_formula
    dense = F.layer_activation_bytes_llama(s, b, h, a, kv, spec.ffn, t, sp, recompute, pc.flash_attention, impl=impl)
    if not spec.is_moe:
        return dense
    moe = F.layer_activation_bytes_llama(s, b, h, a, kv, spec.ffn, t, sp, recompute, pc.flash_attention,
                                         moe_top_k=spec.top_k, moe_ffn=spec.expert_ffn,
                                         capacity=spec.capacity_factor, shared_ffn=spec.shared_ffn, impl=impl)
    return (dense * (spec.n_layers - spec.moe_layers) + moe * spec.moe_layers) / spec.n_layers


def _checkpoint(counts: dict, pc, cfg: ProjectConfig, step_s: float, steps: float) -> dict:
    w, _, o = F.OPTIMIZER_SCHEMES[pc.optimizer_scheme]
    size = counts["total"] * (w + o)  # weights + optimizer states (master copy, m, v); gradients are not saved
    write_s = size / (pc.storage_write_gbps * 1e9)
    every = pc.checkpoint_every_steps or cfg.checkpoint.every
    interval = every * step_s
    return {
        "bytes_per_param": w + o,
        "size_bytes": size,
        "weights_only_bf16_bytes": counts["total"] * 2,
        "storage_write_bytes_per_s": pc.storage_write_gbps * 1e9,
        "write_seconds": write_s,
        "every_steps": every,
        "interval_seconds": interval,
        "overhead_fraction": write_s / interval if interval > 0 else float("inf"),
        "count": math.ceil(steps / every),
    }


def _io(spec: ModelSpec | None, pc, tokens_per_s: float) -> dict:
    vocab = spec.vocab_size if spec is not None else None  # unknown: assume uint32 ids unless bytes_per_token says
    bpt = pc.bytes_per_token or (2 if vocab is not None and vocab <= 65536 else 4)
    out: dict = {"bytes_per_token": bpt, "tokens_per_s": tokens_per_s, "text_bytes_per_s": tokens_per_s * bpt}
    if pc.video_cameras:
        raw = F.camera_bytes_per_second(pc.video_cameras, pc.video_width, pc.video_height, pc.video_channels,
                                        pc.video_bytes_per_channel, pc.video_fps)
        stored = raw / pc.video_compression
        tokens_per_recorded_s = pc.video_cameras * pc.video_fps * pc.video_tokens_per_frame
        recorded_s_per_s = tokens_per_s / tokens_per_recorded_s
        out["video"] = {
            "cameras": pc.video_cameras,
            "frame": [pc.video_width, pc.video_height, pc.video_channels],
            "fps": pc.video_fps,
            "raw_bytes_per_recorded_second": raw,
            "compression": pc.video_compression,
            "stored_bytes_per_recorded_second": stored,
            "tokens_per_recorded_second": tokens_per_recorded_s,
            "recorded_seconds_per_training_second": recorded_s_per_s,
            "read_bytes_per_s": recorded_s_per_s * stored,
            "raw_decode_bytes_per_s": recorded_s_per_s * raw,
        }
    if pc.data_prep_tb > 0:
        out["data_prep"] = _data_prep(pc)
    return out


def _data_prep(pc) -> dict:
    """Hours of `data build` for ``data_prep_tb`` on N nodes x C cores at the measured per-core rate."""
    rate = pc.data_mb_per_core_s * pc.data_parallel_efficiency  # MB/s per core at scale
    rows = [{"nodes": n, "cores": n * pc.data_cores_per_node,
             "hours": pc.data_prep_tb * 1e6 / (rate * n * pc.data_cores_per_node) / 3600} for n in pc.data_nodes]
    return {"tb": pc.data_prep_tb, "mb_per_core_s": pc.data_mb_per_core_s,
            "parallel_efficiency": pc.data_parallel_efficiency, "rows": rows}


def _chinchilla(spec: ModelSpec, counts: dict, tokens: float) -> dict:
    n = counts["total"]
    return {
        "label": "prior: Hoffmann et al. 2022 parametric fit on MassiveText (not this tokenizer or data)",
        "n_params": n,
        "tokens_20_per_param": F.chinchilla_tokens_rule(n),
        "tokens_fit_optimal": F.chinchilla_tokens_fit(n),
        "tokens_per_param": tokens / n,
        "predicted_loss": F.chinchilla_loss(n, tokens),
        "fit": F.CHINCHILLA,
    }


def _energy(hw: Hardware, pc, devices: int, secs: float) -> dict:
    kw = hw.power_w / 1000
    kwh = [devices * kw * secs * b / 3600 * pc.pue for b in (pc.buffer_low, pc.buffer_high)]
    return {
        "device_power_w": hw.power_w,
        "pue": pc.pue,
        "grid_kg_co2_per_kwh": pc.grid_kg_co2_per_kwh,
        "kwh": kwh,
        "tonnes_co2": [k * pc.grid_kg_co2_per_kwh / 1000 for k in kwh],
        "assumes": "devices draw their TDP for the whole buffered wall time; hosts and network not counted",
    }


def compare_items(base_path: str | Path | None, overrides: list[str], items: list[str]) -> list[tuple[str, ProjectConfig]]:
    """Configurations for --compare: each item is a YAML file or comma-separated KEY=VALUE overrides.

    Keys without a section mean plan keys (``devices=128`` is ``plan.devices=128``); the command's own
    -c/--set/flags apply to every item first.
    """
    out = []
    for item in items:
        if "=" in item and not Path(item).exists():
            extra = [kv if "." in kv.split("=", 1)[0] else f"plan.{kv}" for kv in item.split(",") if kv.strip()]
            out.append((item, load_plan_config(base_path, overrides + extra)))
        else:
            out.append((Path(item).stem, load_plan_config(item, overrides)))
    return out


def run_plan(config_path: str | Path | None, overrides: list[str], compare: list[str] | None = None,
             json_out: str | None = None, html_out: str | None = None) -> list[tuple[str, dict]]:
    """The `pretrainlab plan` command: build one plan (or several with --compare) and write the outputs."""
    if compare:
        cfgs = compare_items(config_path, overrides, compare)
    else:
        cfg = load_plan_config(config_path, overrides)
        cfgs = [(Path(config_path).stem if config_path else (cfg.plan.model_preset or "plan"), cfg)]
    plans = [(label, make_plan(cfg)) for label, cfg in cfgs]
    if json_out == "-":
        print(to_json(plans))
    else:
        print_table(plans)
        if json_out:
            atomic_write_text(json_out, to_json(plans) + "\n")
            print(f"wrote {json_out}")
    if html_out:
        print(f"wrote {write_html(html_out, plans)}")
    return plans
