"""MoE layer: routing and capacity arithmetic, dropping, dispatch paths, aux losses, accounting."""

import math

import pytest
import torch

from pretrainlab.config import load_config
from pretrainlab.errors import ConfigError
from pretrainlab.model.moe import (
    MoE,
    expert_capacity,
    load_balance_loss,
    moe_layers,
    naive_moe_forward,
    plan_dispatch,
    router_z_loss,
)
from pretrainlab.model.transformer import Transformer, count_params, flops_per_token


def model_cfg(*sets: str):
    base = ["model.vocab_size=64", "model.d_model=16", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=16",
            "model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.expert_hidden=24"]
    return load_config(None, base + list(sets)).model


def make_layer(*sets: str, seed: int = 0) -> MoE:
    torch.manual_seed(seed)
    layer = MoE(model_cfg(*sets))
    for p in layer.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)
    return layer


def test_capacity_is_factor_times_tokens_times_k_over_experts_rounded_up():
    assert expert_capacity(num_tokens=10, num_experts=4, top_k=2, factor=1.25) == 7  # 6.25 -> 7
    assert expert_capacity(num_tokens=64, num_experts=8, top_k=2, factor=1.0) == 16
    assert expert_capacity(num_tokens=1, num_experts=64, top_k=1, factor=1.0) == 1


def test_first_choices_fill_experts_before_second_choices_and_overflow_is_dropped():
    ids = torch.tensor([[0, 1], [0, 1], [1, 0], [0, 1]])
    w = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.8, 0.2], [0.9, 0.1]])
    plan = plan_dispatch(ids, w, num_experts=2, capacity=3)
    # expert 0 queue: t0 c0, t1 c0, t3 c0, t2 c1 -> t2's second choice is dropped; expert 1 likewise drops t3 c1
    assert plan.keep.tolist() == [[True, True], [True, True], [True, False], [True, False]]
    assert plan.demand.tolist() == [4, 4] and plan.counts.tolist() == [3, 3]
    assert plan.token_idx.tolist() == [0, 1, 3, 2, 0, 1]
    assert plan.weights.tolist() == pytest.approx([0.6, 0.7, 0.9, 0.8, 0.4, 0.3])


def test_dropless_keeps_every_assignment_however_skewed():
    ids = torch.zeros(10, 1, dtype=torch.long)
    plan = plan_dispatch(ids, torch.ones(10, 1), num_experts=4, capacity=None)
    assert plan.keep.all() and plan.counts.tolist() == [10, 0, 0, 0]


@pytest.mark.parametrize("mode", ["grouped_mm", "bmm", "loop"])
@pytest.mark.parametrize("extra", [[], ["model.moe.dropless=true"], ["model.moe.num_shared_experts=1"]])
def test_every_dispatch_path_matches_the_per_expert_reference_forward_and_backward(mode, extra):
    layer = make_layer(f"model.moe.dispatch={mode}", "model.moe.capacity_factor=1.0", *extra)
    x = torch.randn(3, 10, 16, requires_grad=True)
    out = layer(x)
    assert out.abs().sum() > 0
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *layer.parameters()], g)
    x2 = x.detach().clone().requires_grad_()
    ref = naive_moe_forward(layer, x2)
    ref_grads = torch.autograd.grad(ref, [x2, *layer.parameters()], g)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_token_whose_assignments_are_all_dropped_gets_zero_from_the_layer():
    layer = make_layer("model.moe.top_k=1", "model.moe.capacity_factor=0.25")
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[2] = 1.0  # every token prefers expert 2 (positive inputs below)
    x = torch.rand(1, 16, 16) + 0.1
    out = layer(x)
    cap = expert_capacity(16, 4, 1, 0.25)
    assert cap == 1
    assert out[0, 0].abs().sum() > 0  # the first token got expert 2's only slot
    assert torch.equal(out[0, 1:], torch.zeros(15, 16))  # the rest pass through the block's residual unchanged
    layer.eval()  # evaluation and generation never drop: every token gets its expert
    assert (layer(x).abs().sum(-1) > 0).all()


def test_dropped_tokens_pass_through_the_residual_of_the_block():
    cfg = model_cfg("model.moe.top_k=1", "model.moe.capacity_factor=0.01")
    torch.manual_seed(0)
    model = Transformer(cfg)
    block = model.layers[0]
    x = torch.randn(1, 16, 16)
    cos, sin = model.rope_cos[:16][None, None], model.rope_sin[:16][None, None]
    after_attn = x + block.attn(block.attn_norm(x), cos, sin)
    out = block(x, cos, sin)
    changed = (out - after_attn).abs().sum(-1)[0] > 0
    assert changed.sum() <= 4  # at most one token per expert survives capacity 1
    assert changed.sum() >= 1


def test_uniform_routing_gives_the_load_balance_minimum_of_one_and_collapse_gives_num_experts():
    e, t = 4, 8
    uniform = load_balance_loss(torch.full((t, e), 1 / e), torch.arange(t).remainder(e).view(t, 1), e)
    assert uniform.item() == pytest.approx(1.0)
    collapsed = load_balance_loss(torch.eye(e)[torch.zeros(t, dtype=torch.long)], torch.zeros(t, 1, dtype=torch.long), e)
    assert collapsed.item() == pytest.approx(e)
    # a known skewed case: f = (3/4, 1/4), P = (0.6, 0.4) -> 2 * (0.45 + 0.1) = 1.1
    probs = torch.tensor([[0.6, 0.4]] * 4)
    ids = torch.tensor([[0], [0], [0], [1]])
    assert load_balance_loss(probs, ids, 2).item() == pytest.approx(1.1)


def test_z_loss_is_the_mean_squared_logsumexp():
    assert router_z_loss(torch.zeros(5, 8)).item() == pytest.approx(math.log(8) ** 2)
    logits = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    expect = (torch.logsumexp(logits, -1) ** 2).mean()
    assert router_z_loss(logits).item() == pytest.approx(expect.item())


def test_router_gets_gradient_from_the_output_and_from_each_aux_loss():
    layer = make_layer()
    x = torch.randn(2, 8, 16)
    for term in (lambda out: out.pow(2).sum(), lambda out: layer.aux_loss, lambda out: layer.z_loss):
        layer.zero_grad()
        term(layer(x)).backward()
        assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0


def test_model_loss_adds_the_weighted_aux_losses_in_training_and_is_pure_cross_entropy_in_eval():
    cfg = model_cfg("model.moe.aux_loss_coef=0.1", "model.moe.z_loss_coef=0.01")
    torch.manual_seed(0)
    model = Transformer(cfg)
    x = torch.randint(0, 64, (2, 12))
    model.train()
    logits, loss = model(x, x)
    ce = torch.nn.functional.cross_entropy(logits.view(-1, 64), x.view(-1))
    aux, z = model.moe_aux_losses()
    assert aux.item() >= 1.0 - 1e-6  # never below its uniform minimum
    assert loss.item() == pytest.approx((ce + 0.1 * aux + 0.01 * z).item(), rel=1e-6)
    model.eval()
    logits, loss = model(x, x)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits.view(-1, 64), x.view(-1)).item())


def test_router_jitter_perturbs_routing_only_in_training():
    layer = make_layer("model.moe.router_jitter=0.5")
    x = torch.randn(64, 16)
    layer.eval()
    assert torch.equal(layer.route(x)[0], layer.route(x)[0])
    layer.train()
    assert not torch.equal(layer.route(x)[0], layer.route(x)[0])


def test_param_counts_match_the_built_model_and_flops_use_active_parameters():
    for extra in ([], ["model.moe.layers=[1]", "model.moe.num_shared_experts=2"], ["model.tie_embeddings=false"]):
        cfg = model_cfg(*extra)
        model = Transformer(cfg)
        counts = count_params(cfg)
        assert counts["total"] == sum(p.numel() for p in model.parameters())
        n_moe = len(moe_layers(model))
        assert counts["active"] == counts["total"] - n_moe * (4 - 2) * counts["expert"]
    dense = model_cfg("model.moe=null", "model.ffn_hidden=48")  # same active MLP width as k=2 experts of 24
    moe = model_cfg()
    per_token_gap = flops_per_token(moe, 16) - flops_per_token(dense, 16)
    assert per_token_gap == 6 * 2 * 16 * 4  # only the two routers (d_model x experts) are extra active work


def test_moe_config_errors_are_one_clear_line():
    with pytest.raises(ConfigError, match="did you mean 'model.moe.num_experts'"):
        load_config(None, ["model.moe.num_expert=4"])
    with pytest.raises(ConfigError, match="top_k"):
        load_config(None, ["model.moe.num_experts=4", "model.moe.top_k=5"])
    with pytest.raises(ConfigError, match="moe.layers"):
        load_config(None, ["model.n_layers=2", "model.moe.layers=[2]"])


def test_bf16_autocast_runs_experts_in_bf16_with_an_fp32_router():
    layer = make_layer()
    x = torch.randn(2, 8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.float32  # the block keeps its input dtype
    assert layer.z_loss.dtype == torch.float32
    torch.testing.assert_close(out, layer(x), rtol=0.05, atol=0.05)


def test_routing_stats_count_each_training_forward_once_even_under_activation_checkpointing():
    from torch.utils.checkpoint import checkpoint

    layer = make_layer()
    x = torch.randn(2, 8, 16, requires_grad=True)
    checkpoint(layer, x, use_reentrant=False).sum().backward()  # the backward re-runs the forward
    stats = layer.pop_stats()
    assert stats["calls"].item() == 1 and stats["demand"].sum().item() == 2 * 8 * 2
    layer.eval()
    layer(x)
    assert layer.pop_stats() == {}  # evaluation forwards are not training statistics
