"""FP8 training (train.fp8): refused with one line where the hardware lacks FP8; the swap skips the listed layers.

The FP8 matmuls themselves run only on a GPU (tests/test_cuda.py, benchmarks/gpu_suite.py).
"""

from __future__ import annotations

import pytest
import torch

from pretrainlab.errors import UserError
from pretrainlab.train.fp8 import fp8_unsupported_reason


def test_fp8_on_the_cpu_is_refused_with_one_line_saying_what_is_needed(tiny_cfg, capsys):
    from pretrainlab.recipes import train

    with pytest.raises(UserError) as err:
        train(tiny_cfg("train.fp8=true", "train.device=cpu"), resume="never")
    msg = str(err.value)
    assert "\n" not in msg
    assert "train.fp8" in msg and "8.9" in msg and "train.fp8=false" in msg


def test_the_cli_prints_the_fp8_refusal_as_one_error_line(tiny_data, tmp_path):
    import subprocess
    import sys

    from conftest import tiny_overrides

    sets = [a for o in tiny_overrides(tiny_data) + [f"run.dir={tmp_path / 'r'}", "train.fp8=true", "train.device=cpu"]
            for a in ("--set", o)]
    out = subprocess.run([sys.executable, "-m", "pretrainlab.cli", "train", *sets], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: train.fp8 needs a CUDA GPU"), out.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_a_gpu_older_than_ada_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    reason = fp8_unsupported_reason(torch.device("cuda", 0))
    assert "8.9" in reason and "A100" in reason and "8.0" in reason


def test_hopper_is_accepted(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert fp8_unsupported_reason(torch.device("cuda", 0)) is None


def test_fp8_with_fp16_autocast_is_refused(monkeypatch):
    from pretrainlab.config import load_config
    from pretrainlab.train import fp8

    monkeypatch.setattr(fp8, "check_fp8", lambda device: None)  # as on a Hopper GPU with torchao
    cfg = load_config(None, ["train.fp8=true", "train.precision=fp16"])
    with pytest.raises(UserError, match="train.precision=bf16"):
        fp8.apply_fp8(torch.nn.Linear(16, 16), cfg.train, torch.device("cuda", 0))


def test_the_swap_converts_block_linears_and_skips_the_output_projection_and_router():
    pytest.importorskip("torchao.float8", reason="torchao is the optional fp8 extra")
    from pretrainlab.config import load_config
    from pretrainlab.model.transformer import Transformer
    from pretrainlab.train.fp8 import convert_to_fp8

    cfg = load_config(None, ["model.vocab_size=256", "model.d_model=64", "model.n_layers=2", "model.n_heads=4",
                             "model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.expert_hidden=32",
                             "model.moe.layers=[1]"]).model
    model = Transformer(cfg)
    names_before = set(model.state_dict())
    converted = convert_to_fp8(model, "tensorwise", ["lm_head", "router", "wo"])
    assert "layers.0.attn.wq" in converted and "layers.0.mlp.w_gate" in converted
    assert not any(n.endswith(("lm_head", "router", "wo")) for n in converted)
    assert type(model.lm_head) is torch.nn.Linear and type(model.layers[1].mlp.router) is torch.nn.Linear
    assert set(model.state_dict()) == names_before  # checkpoints keep their names


def test_linears_whose_dims_are_not_multiples_of_16_stay_high_precision():
    from pretrainlab.train.fp8 import fp8_filter

    keep = fp8_filter(["lm_head"])
    assert keep(torch.nn.Linear(64, 48), "layers.0.attn.wq")
    assert not keep(torch.nn.Linear(64, 40), "layers.0.attn.wq")
    assert not keep(torch.nn.Linear(64, 64), "lm_head")
