"""AdamW parameter groups and the warmup+cosine schedule."""

import math

import pytest

from pretrainlab.config import ModelConfig, OptimConfig
from pretrainlab.model.transformer import Transformer
from pretrainlab.train.optim import build_optimizer, lr_at, param_groups


def test_no_weight_decay_on_norms_biases_and_embeddings():
    m = Transformer(ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, max_seq_len=8))
    decay, no_decay = param_groups(m, 0.1)
    decay_ids = {id(p) for p in decay["params"]}
    assert id(m.embed.weight) not in decay_ids
    assert all(id(p) not in decay_ids for n, p in m.named_parameters() if "norm" in n)
    assert id(m.layers[0].attn.wq.weight) in decay_ids
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    n_unique = len({id(p) for p in m.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_unique


def test_adamw_uses_recipe_betas_and_eps():
    m = Transformer(ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, max_seq_len=8))
    opt = build_optimizer(m, OptimConfig(), "cpu")
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8


def test_adamw_is_fused_on_the_cpu_and_a_loaded_state_does_not_change_that():
    m = Transformer(ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, max_seq_len=8))
    fused = build_optimizer(m, OptimConfig(), "cpu")
    assert all(g["fused"] for g in fused.param_groups)
    # A state saved by a fused optimizer, loaded where fusing is off (e.g. FSDP2 DTensor parameters on the
    # CPU, where the fused kernel fails), keeps this optimizer's choice rather than the saving run's.
    plain = build_optimizer(m, OptimConfig(), "xla")
    plain.load_state_dict(fused.state_dict())
    assert not any(g["fused"] for g in plain.param_groups)


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, 110, cfg) == pytest.approx(0.1)
    assert lr_at(9, 110, cfg) == pytest.approx(1.0)
    assert lr_at(10, 110, cfg) == pytest.approx(1.0)
    assert lr_at(60, 110, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, 110, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, 110, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
