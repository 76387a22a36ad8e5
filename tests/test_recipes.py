"""Shipped recipes: the 1B baseline has the plan's numbers and the dry run sizes it without allocating."""

from pathlib import Path

import pytest

from pretrainlab.config import load_config
from pretrainlab.errors import UserError
from pretrainlab.train.dry_run import dry_run

CONFIGS = Path(__file__).parents[1] / "configs"


def test_dense_1b_recipe_matches_the_plan():
    cfg = load_config(CONFIGS / "dense_1b.yaml")
    assert cfg.train.global_batch_tokens == 2**21 and cfg.train.seq_len == 4096
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.weight_decay) == (5e-4, 3000, 0.05)
    assert (cfg.optim.beta1, cfg.optim.beta2) == (0.9, 0.95)


def test_dry_run_counts_a_1b_model_on_the_meta_device():
    cfg = load_config(CONFIGS / "dense_1b.yaml", ["model.vocab_size=32000"])
    result = dry_run(cfg, world=8)
    assert result["params_total"] == 1_100_048_384  # TinyLlama-1.1B's shape
    assert result["grad_accum"] == 16
    assert result["flops_per_token"] > 6 * 1.0e9


def test_dry_run_refuses_a_world_size_that_does_not_divide_the_batch():
    cfg = load_config(CONFIGS / "dense_1b.yaml", ["model.vocab_size=32000"])
    with pytest.raises(UserError, match="not divisible"):
        dry_run(cfg, world=3)


def test_moe_10b_recipe_is_10b_total_2_5b_active_with_the_plan_numbers():
    cfg = load_config(CONFIGS / "moe_10b.yaml")
    assert cfg.train.global_batch_tokens == 2**22 and cfg.train.seq_len == 8192
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.weight_decay) == (1.5e-4, 5000, 0.1)
    assert cfg.model.moe.capacity_factor == 1.25
    result = dry_run(cfg, world=256)
    assert abs(result["params_total"] - 10e9) / 10e9 < 0.01
    assert abs(result["params_active"] - 2.5e9) / 2.5e9 < 0.02
    assert result["memory_fits"]
