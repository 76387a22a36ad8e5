"""The planner's formulas against hand-computed values from the papers they come from."""

from __future__ import annotations

import math

import pytest

from pretrainlab.plan import formulas as F


def test_6n_counts_two_forward_and_four_backward_flops_per_parameter():
    assert F.flops_per_token_6n(2.5e9) == 1.5e10


def test_attention_term_is_12_layers_dmodel_seq():
    # QK^T and AV: 2*s*d each per token and layer forward = 4sd; training x3 -> 12sd per layer.
    assert F.attention_flops_per_token(32, 4096, 4096) == 12 * 32 * 4096 * 4096


def test_zero_paper_7_5b_on_64_gpus_120_31_4_16_6_1_9_gb():
    # Rajbhandari et al. 2020, figure 1: Psi = 7.5B, N_d = 64, K = 12 (mixed-precision Adam).
    gb = [sum(F.model_state_bytes(7.5e9, "mixed", z, 64).values()) / 1e9 for z in range(4)]
    assert gb == pytest.approx([120.0, 31.40625, 16.640625, 1.875])
    assert [round(x, 1) for x in gb] == [120.0, 31.4, 16.6, 1.9]


def test_optimizer_schemes_bytes_per_param():
    assert F.OPTIMIZER_SCHEMES["mixed"] == (2, 2, 12)
    assert F.OPTIMIZER_SCHEMES["fp32-master"] == (4, 4, 8)
    assert sum(F.OPTIMIZER_SCHEMES["mixed-fp32-grads"]) == 18
    # ZeRO-2 with fp32 master: weights replicated (4), grads and states sharded.
    z2 = F.model_state_bytes(1e9, "fp32-master", 2, 8)
    assert z2 == {"weights": 4e9, "gradients": 0.5e9, "optimizer": 1e9}


# Korthikanti et al. 2022 on GPT-3 175B: s=2048, b=1, h=12288, a=96, t=8.
S, B, H, A, T = 2048, 1, 12288, 96, 8
SBH = S * B * H


def test_korthikanti_per_layer_activation_formulas():
    assert F.layer_activation_bytes_gpt(S, B, H, A) == SBH * (34 + 5 * A * S / H) == SBH * 114
    assert F.layer_activation_bytes_gpt(S, B, H, A, t=T) == SBH * (10 + 24 / T + 80 / T)
    assert F.layer_activation_bytes_gpt(S, B, H, A, t=T, sp=True) == 358_612_992  # sbh/t * 114
    assert F.layer_activation_bytes_gpt(S, B, H, A, t=T, sp=True, recompute="selective") == SBH * 34 / T
    assert F.layer_activation_bytes_gpt(S, B, H, A, t=T, sp=True, recompute="full") == 2 * SBH / T


def test_selective_recompute_saves_70_percent_on_gpt3_as_the_paper_reports():
    full = F.layer_activation_bytes_gpt(S, B, H, A, t=T, sp=True)
    sel = F.layer_activation_bytes_gpt(S, B, H, A, t=T, sp=True, recompute="selective")
    assert 1 - sel / full == pytest.approx(0.70, abs=0.01)


def test_llama_layer_count_from_first_principles():
    # Llama-2-7B block, flash attention, no TP: norms 2+2, QKV in 2, Q 2, K+V 4, attn out 2, MLP in 2, SwiGLU 6f/h.
    s, b, h, f = 4096, 1, 4096, 11008
    got = F.layer_activation_bytes_llama(s, b, h, 32, 1.0, f)
    assert got == s * b * h * (2 + 2 + 2 + 2 + 4 + 2 + 2 + 6 * f / h)
    # GQA 8 of 32 heads: K and V shrink to a quarter.
    assert F.layer_activation_bytes_llama(s, b, h, 32, 0.25, f) == got - s * b * h * 3
    # Without a flash kernel the softmax output 2as^2b is kept (no dropout in Llama, so not 5as^2b).
    assert F.layer_activation_bytes_llama(s, b, h, 32, 1.0, f, flash=False) == got + 2 * 32 * s * s * b
    # TP without SP: the two norm inputs and two matmul inputs (8sbh) stay replicated.
    tp = F.layer_activation_bytes_llama(s, b, h, 32, 1.0, f, t=4)
    assert tp == s * b * h * (8 + (got / (s * b * h) - 8) / 4)


def test_moe_layer_keeps_k_routed_copies():
    s, b, h = 128, 2, 64
    dense = F.layer_activation_bytes_llama(s, b, h, 4, 1.0, 128)
    moe = F.layer_activation_bytes_llama(s, b, h, 4, 1.0, 128, moe_top_k=2, moe_ffn=128)
    assert moe - dense == s * b * h * 2 * (4 + 6 * 128 / h) - s * b * h * 6 * 128 / h


def test_pipeline_bubble_and_in_flight():
    assert F.pipeline_bubble(8, 32) == 7 / 32
    assert F.pipeline_bubble(1, 4) == 0
    assert F.pipeline_in_flight(8, 32) == 8 and F.pipeline_in_flight(8, 3) == 3


def test_document_001_camera_example_is_66_mb_per_second_raw():
    raw = F.camera_bytes_per_second(6, 640, 480, 3, 1, 12)
    assert raw == 66_355_200  # not the ~10 MB/s the document states
    assert round(raw / 1e6) == 66


def test_chinchilla_loss_and_compute_optimal_tokens():
    assert F.chinchilla_loss(70e9, 1.4e12) == pytest.approx(
        1.69 + 406.4 / (70e9 ** 0.34) + 410.7 / (1.4e12 ** 0.28))
    assert F.chinchilla_loss(70e9, 1.4e12) == pytest.approx(1.937, abs=2e-3)
    assert F.chinchilla_tokens_rule(7e9) == 1.4e11
    # The fit's optimal D for N is where N minimizes loss along its iso-FLOP curve C = 6ND.
    n = 7e9
    d = F.chinchilla_tokens_fit(n)
    c = 6 * n * d
    at = F.chinchilla_loss(n, d)
    for eps in (0.9, 1.1):
        assert F.chinchilla_loss(n * eps, c / (6 * n * eps)) > at
    assert 40 < d / n < 100  # approach 3 favours more tokens than the 20/param rule at this scale


def test_compute_seconds_of_the_corrected_003_example():
    secs = F.compute_seconds(1.5e23, 256, 2000e12, 0.5)
    assert secs == pytest.approx(5.859375e5)
    assert secs / 86400 == pytest.approx(6.78, abs=0.005)
    assert math.isclose(secs, 1.5e23 / 2.56e17)


def test_pretrainlab_block_formula():
    s, b, h, f = 1024, 2, 512, 1408
    assert F.layer_activation_bytes_llama(s, b, h, 8, 0.25, f, impl="pretrainlab") == s * b * h * (22 + 4 * 0.25 + 8 * f / h)
    assert F.layer_activation_bytes_llama(s, b, h, 8, 0.25, f, impl="pretrainlab", recompute="full") == 4 * s * b * h


def _saved_activation_bytes(block, x, cos, sin) -> int:
    """Bytes autograd keeps for backward in one block: unique storages, weights and their casts excluded."""
    import torch

    weight_shapes = {tuple(p.shape) for p in block.parameters()} | {tuple(p.shape[::-1]) for p in block.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if tuple(t.shape) not in weight_shapes:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = block(x, cos, sin)
    y.float().sum().backward()
    return sum(seen.values())


def test_pretrainlab_formula_matches_what_autograd_keeps_for_our_block():
    """First-principles check: run the repository's Block under bf16 autocast and count the saved tensors."""
    import torch

    from pretrainlab.config import ModelConfig
    from pretrainlab.model.transformer import Block, rope_tables

    torch.manual_seed(0)
    s, b, h = 96, 2, 128
    cfg = ModelConfig(vocab_size=64, d_model=h, n_layers=1, n_heads=4, n_kv_heads=2, max_seq_len=s)
    block = Block(cfg, 0)
    cos, sin = rope_tables(cfg.head_dim, s, cfg.rope_theta)
    x = torch.randn(b, s, h, requires_grad=True)
    measured = _saved_activation_bytes(block, x, cos[None, None], sin[None, None])
    predicted = F.layer_activation_bytes_llama(s, b, h, 4, 0.5, cfg.ffn_dim, impl="pretrainlab")
    assert measured == pytest.approx(predicted, rel=0.05)
    fused = F.layer_activation_bytes_llama(s, b, h, 4, 0.5, cfg.ffn_dim, impl="fused")
    assert measured > 1.5 * fused  # unfused norms, fp32 residual and autocast copies cost this much
