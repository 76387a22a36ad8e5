"""Training with L = L_CE + λ1·InfoNCE + λ2·Action on multimodal shards (the `multimodal` loss weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pretrainlab.fsio import iter_jsonl
from pretrainlab.multimodal.build import mm_paths
from pretrainlab.multimodal.actions import action_index, action_targets
from pretrainlab.tokenizer.vocab import load_tokenizer
from pretrainlab.train import checkpoint as ckpt
from pretrainlab.train.loader import MixtureLoader
from pretrainlab.recipes import train
from test_multimodal import mm_cfg, mm_work  # noqa: F401  (module fixture: tokenizer, demo data, shards)
from test_train import _InterruptAt

# Rows long enough for whole documents (cut only between groups), so each row pairs images with their caption.
ROWS = ["packing.mode=best_fit", "train.seq_len=256", "model.max_seq_len=256", "multimodal.max_doc_tokens=257",
        "train.micro_batch=8", "train.global_batch_tokens=2048"]
LOSSES = ["multimodal.lambda_infonce=1.0", "multimodal.lambda_action=1.0", "multimodal.action_head_lr=0.01"]


def _cfg(mm_work, run_dir, *extra):
    return mm_cfg(mm_work, f"train.tokens={mm_work / 'mm_tokens'}", f"run.dir={run_dir}", "train.log_every=1",
                  *ROWS, *extra)


def _train_records(run_dir):
    return [r for r in iter_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def test_action_targets_carry_the_stored_continuous_values_of_action_bins(mm_work):
    cfg = _cfg(mm_work, mm_work / "unused")
    tok = load_tokenizer(mm_paths(cfg)["tokenizer"])
    loader = MixtureLoader(cfg.train_tokens_dir, cfg.train.seq_len, cfg.train.micro_batch, 0, packing=cfg.packing,
                           eos_id=tok.eos_id, pad_id=tok.pad_id)
    index = action_index(loader.readers)
    batch = loader.next_batch()
    mask, values = action_targets(batch.inputs, batch.targets, tok.eos_id, index)
    action_ids = tok.spec.id_range("action")
    in_range = (batch.targets >= action_ids.start) & (batch.targets < action_ids.stop)
    assert mask.any() and torch.equal(mask, in_range)  # whole docs: every action target, and nothing else
    stored = np.load(cfg.train_tokens_dir / "multimodal" / "train.action_values.npy")
    assert np.isin(values[mask].numpy(), stored).all()


def test_infonce_and_action_losses_are_logged_and_fall_over_20_steps(mm_work, tmp_path):
    summary = train(_cfg(mm_work, tmp_path / "run", "train.steps=20", "train.val_every=20", "checkpoint.every=20",
                         *LOSSES))
    recs = _train_records(tmp_path / "run")
    assert summary["steps"] == 20 and len(recs) == 20
    for r in recs:
        parts = [r["ce_loss"], r["loss/infonce"], r["loss/action"]]
        assert all(np.isfinite(parts)) and r["loss"] == pytest.approx(sum(parts), rel=1e-5)
    for key in ("loss/infonce", "loss/action"):
        series = [r[key] for r in recs]
        assert np.mean(series[-5:]) < 0.8 * np.mean(series[:5]), (key, series)


def test_text_runs_log_no_extra_terms(mm_work, tmp_path):
    train(_cfg(mm_work, tmp_path / "run", "train.steps=2", "train.val_every=2", "checkpoint.every=2"))
    assert all("ce_loss" not in r and "loss/infonce" not in r for r in _train_records(tmp_path / "run"))


def test_resume_restores_the_action_head_and_reproduces_the_losses_exactly(mm_work, tmp_path):
    full = train(_cfg(mm_work, tmp_path / "full", "train.steps=8", "train.val_every=100", *LOSSES))
    split_cfg = _cfg(mm_work, tmp_path / "split", "train.steps=8", "train.val_every=100", "checkpoint.every=100",
                     *LOSSES)
    with pytest.raises(KeyboardInterrupt):
        train(split_cfg, callbacks=[_InterruptAt(4)])
    model_state = torch.load(ckpt.latest_checkpoint(split_cfg.run_dir) / "model.pt", weights_only=True)
    assert {"mm.action.proj.weight", "mm.action.proj.bias"} <= set(model_state)  # the head is part of the model
    resumed = train(split_cfg, resume="auto")
    assert resumed["losses"] == full["losses"][4:]
    assert [r["loss/action"] for r in _train_records(split_cfg.run_dir)] == \
        [r["loss/action"] for r in _train_records(tmp_path / "full")]
