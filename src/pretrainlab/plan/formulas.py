"""The planner's arithmetic, one formula per function, each checked in tests/test_plan_formulas.py.

Units: FLOPs, FLOP/s, bytes, seconds. References (details in docs/PLANNER.md):
Kaplan et al. 2020 and Hoffmann et al. 2022 (6N training FLOPs, Chinchilla fit),
PaLM (Chowdhery et al. 2022, appendix B: 12*L*d*s attention term),
Rajbhandari et al. 2020 (ZeRO memory), Korthikanti et al. 2022 (activation
memory and recomputation), Narayanan et al. 2021 (pipeline bubble).
"""

from __future__ import annotations

import math

# ---------------------------------------------------------------------------- compute

def flops_per_token_6n(matmul_params: float) -> float:
    """6N: 2N forward (one multiply-add per weight) + 4N backward (input and weight gradients)."""
    return 6.0 * matmul_params


def attention_flops_per_token(n_layers: int, d_model: int, seq_len: int) -> float:
    """12*L*d*s: QK^T and AV, 2*s*d FLOPs each per token and layer forward, x3 for training (non-causal count)."""
    return 12.0 * n_layers * d_model * seq_len


def compute_seconds(total_flops: float, devices: int, peak_flops: float, mfu: float) -> float:
    return total_flops / (devices * peak_flops * mfu)


# ---------------------------------------------------------------------------- memory: model states

# Bytes per parameter: (weights, gradients, optimizer states) for AdamW.
OPTIMIZER_SCHEMES: dict[str, tuple[int, int, int]] = {
    "mixed": (2, 2, 12),  # bf16/fp16 weights and grads; fp32 master copy + m + v (ZeRO paper, K=12)
    "fp32-master": (4, 4, 8),  # fp32 weights and grads (autocast computes in bf16); fp32 m + v
    "mixed-fp32-grads": (2, 4, 12),  # Megatron: bf16 weights, fp32 main grads, fp32 master + m + v
}


def model_state_bytes(params: float, scheme: str, zero_stage: int, dp: int) -> dict[str, float]:
    """Per-device weights/grads/optimizer bytes for ``params`` parameters replicated over ``dp`` ranks.

    ZeRO (Rajbhandari et al. 2020): stage 1 shards optimizer states, stage 2 also
    gradients, stage 3 also weights, each by the data-parallel degree.
    """
    w, g, o = OPTIMIZER_SCHEMES[scheme]
    return {
        "weights": params * w / (dp if zero_stage >= 3 else 1),
        "gradients": params * g / (dp if zero_stage >= 2 else 1),
        "optimizer": params * o / (dp if zero_stage >= 1 else 1),
    }


# ---------------------------------------------------------------------------- memory: activations

def layer_activation_bytes_gpt(s: int, b: int, h: int, a: int, t: int = 1, sp: bool = False,
                               recompute: str = "none") -> float:
    """Korthikanti et al. 2022, per transformer layer (GPT: LayerNorm, GeLU 4h MLP, dropout, 2-byte activations).

    none: sbh(34 + 5as/h) ; with TP t: sbh(10 + 24/t + 5as/(ht)) ; with TP + SP: sbh/t (34 + 5as/h)
    selective (attention core recomputed): the 5as/h term goes; full: only the layer input, 2sbh (/t with SP).
    """
    if recompute == "full":
        return 2.0 * s * b * h / (t if sp else 1)
    core = 0.0 if recompute == "selective" else 5.0 * a * s / h
    if sp or t == 1:
        return s * b * h * (34.0 + core) / t
    return s * b * h * (10.0 + 24.0 / t + core / t)


def layer_activation_bytes_llama(s: int, b: int, h: int, a: int, kv_ratio: float, ffn: float, t: int = 1,
                                 sp: bool = False, recompute: str = "none", flash: bool = True,
                                 moe_top_k: int = 0, moe_ffn: float = 0.0, capacity: float = 1.0,
                                 shared_ffn: float = 0.0, impl: str = "fused") -> float:
    """The Korthikanti count redone for a Llama block (RMSNorm, RoPE, SwiGLU, GQA, no dropout), in bytes.

    impl="fused" (fused RMSNorm and SwiGLU kernels, native GQA, 2-byte activations):
      norm inputs 2+2, QKV input 2, Q 2, K and V 4*kv/h, attention output 2, MLP input 2, SwiGLU gate,
      up and down-projection input 6f/h  ->  sbh(12 + 4kv/h + 6f/h).
    impl="pretrainlab" (this repository's Block under bf16 autocast with fp32 weights, as measured by
      benchmarks/plan_activations.py): each norm keeps its fp32 input (4+4, two norms; model/fused_ops.py),
      autocast keeps one bf16 copy of the input per linear (q, k, v: 6; gate, up: 4; the output
      projections' inputs are kept anyway), SDPA with native GQA keeps q, its output and k, v at KV width
      (4 + 4kv/h), and the SwiGLU keeps gate, silu(gate), up and their product (8f/h)
      ->  sbh(22 + 4kv/h + 8f/h).
    Scores 2as^2b are kept only without a flash kernel. An MoE MLP keeps, per routed copy (top-k x
    capacity), the dispatched input 2 and expert output 2 plus the expert's SwiGLU, and shared experts'.
    Under TP without SP the norm and matmul-input terms stay replicated.
    """
    if recompute == "full":  # only the block input: fp32 residual stream in this repository's trainer
        return (4.0 if impl == "pretrainlab" else 2.0) * s * b * h / (t if sp else 1)
    if impl == "pretrainlab":
        base, attn, mlp_in, swiglu = 14.0, 4.0 + 4.0 * kv_ratio, 4.0, 8.0
    elif impl == "fused":
        base, attn, mlp_in, swiglu = 6.0, 4.0 + 4.0 * kv_ratio, 2.0, 6.0
    else:
        raise ValueError(f"unknown impl {impl!r}")
    if moe_top_k:  # router input is the (replicated) MLP input; each routed copy is sharded work
        replicated = base + mlp_in
        # dispatched input (= the expert's matmul input, plus autocast copies beyond it) and expert output
        sharded = attn + moe_top_k * capacity * (4.0 + (mlp_in - 2.0) + swiglu * moe_ffn / h)
        if shared_ffn:
            sharded += swiglu * shared_ffn / h
    else:
        replicated = base + mlp_in
        sharded = attn + swiglu * ffn / h
    core = 0.0 if (flash or recompute == "selective") else 2.0 * a * s / h
    if sp or t == 1:
        return s * b * h * (replicated + sharded + core) / t
    return s * b * h * (replicated + (sharded + core) / t)


def logits_bytes(s: int, b: int, vocab: int, t: int = 1) -> float:
    """Output layer: bf16 logits (2sbV) + fp32 log-softmax kept by the loss (4sbV), vocab-parallel over t."""
    return 6.0 * s * b * vocab / t


def pipeline_in_flight(p: int, m: int) -> int:
    """Micro-batches whose activations the first stage holds under 1F1B: min(p, m)."""
    return max(1, min(p, m))


def pipeline_bubble(p: int, m: int) -> float:
    """Bubble time over ideal time, (p-1)/m (GPipe / 1F1B, Narayanan et al. 2021)."""
    return (p - 1) / m


# ---------------------------------------------------------------------------- I/O

def camera_bytes_per_second(cameras: int, width: int, height: int, channels: int, bytes_per_channel: int,
                            fps: float) -> float:
    """Raw bytes per second of recording: cameras x W x H x C x bytes x frames/s."""
    return float(cameras) * width * height * channels * bytes_per_channel * fps


# ---------------------------------------------------------------------------- Chinchilla prior

CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def chinchilla_loss(n_params: float, tokens: float) -> float:
    """L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, approach 3; nats/token on their data)."""
    c = CHINCHILLA
    return c["E"] + c["A"] / n_params ** c["alpha"] + c["B"] / tokens ** c["beta"]


def chinchilla_tokens_rule(n_params: float) -> float:
    """~20 tokens per parameter (Hoffmann et al. 2022, approaches 1 and 2)."""
    return 20.0 * n_params


def chinchilla_tokens_fit(n_params: float) -> float:
    """Tokens that make n_params compute-optimal under the parametric fit with C = 6ND.

    N_opt(C) = G (C/6)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta)); solve for C, D = C/(6N).
    """
    c = CHINCHILLA
    g = (c["alpha"] * c["A"] / (c["beta"] * c["B"])) ** (1.0 / (c["alpha"] + c["beta"]))
    c_over_6 = (n_params / g) ** ((c["alpha"] + c["beta"]) / c["beta"])
    return c_over_6 / n_params


def is_positive_finite(x: float) -> bool:
    return x > 0 and math.isfinite(x)
