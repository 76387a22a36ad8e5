"""Small training edge cases: the process-group backend follows train.device; no held-out data still trains."""

from __future__ import annotations

import shutil

import pytest

from pretrainlab.train import parallel


@pytest.mark.parametrize("device,cuda,backend", [("cpu", True, "gloo"), ("auto", True, "nccl"), ("cuda", True, "nccl"),
                                                 ("auto", False, "gloo"), ("cpu", False, "gloo")])
def test_the_backend_is_gloo_whenever_training_runs_on_the_cpu(monkeypatch, device, cuda, backend):
    monkeypatch.setattr(parallel.torch.cuda, "is_available", lambda: cuda)
    assert parallel.backend_for(device) == backend


def test_init_distributed_under_torchrun_asks_for_the_backend_of_train_device(monkeypatch):
    import torch.distributed as dist

    asked = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(parallel.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: asked.setdefault("backend", backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    assert parallel.init_distributed("cpu") == (0, 2, 0)
    assert asked == {"backend": "gloo"}


def test_training_without_held_out_tokens_says_so_instead_of_crashing(tiny_cfg, tiny_data, tmp_path, capsys):
    from pretrainlab.recipes import train

    tokens = tmp_path / "tokens"
    shutil.copytree(tiny_data / "tokens", tokens)
    for part in tokens.glob("*/heldout.*"):
        part.unlink()
    result = train(tiny_cfg(f"train.tokens={tokens}", "train.steps=6", "train.val_every=3"))
    assert result["steps"] == 6 and result["final_val_loss"] is None
    err = " ".join(capsys.readouterr().err.split())
    assert "val_loss n/a (no held-out tokens scored) (before training)" in err
