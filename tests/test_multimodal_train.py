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


def test_the_multimodal_heads_are_model_parameters_in_the_one_optimizer():
    from pretrainlab.config import load_config
    from pretrainlab.multimodal.model import MultimodalTransformer
    from pretrainlab.train.optim import build_optimizer, lr_at, set_lr

    cfg = load_config(None, ["model.vocab_size=64", "model.d_model=32", "model.n_layers=1", "model.n_heads=4",
                             "model.n_kv_heads=2", "optim.lr=0.002", "optim.warmup_steps=0", *LOSSES,
                             "multimodal.learn_temperature=true"])
    model = MultimodalTransformer(cfg, spec=None, eos_id=2)
    heads = {"mm.action.proj.weight", "mm.action.proj.bias", "mm.tau.log_tau"}
    assert heads <= {n for n, _ in model.named_parameters()}
    opt = build_optimizer(model, cfg.optim, "cpu")
    set_lr(opt, lr_at(0, 10, cfg.optim))
    (group,) = [g for g in opt.param_groups if g.get("lr_scale")]
    assert {id(p) for p in group["params"]} == {id(p) for p in model.mm.parameters()}
    assert group["lr"] == pytest.approx(0.01) and group["weight_decay"] == 0.0  # multimodal.action_head_lr at peak
    assert all(g["lr"] == 0.002 for g in opt.param_groups if g is not group)


class _RollBackOnceAt:
    """Asks for a rollback that skips no data after step ``step``; records every step it sees."""

    def __init__(self, step: int):
        self.step, self.done, self.seen = step, False, []

    def on_step_end(self, ctx, metrics):
        heads = ctx.raw_model.mm
        self.seen.append((ctx.step, metrics["loss"], heads.action.proj.weight.detach().clone(),
                          float(heads.tau().detach())))
        if ctx.step == self.step and not self.done:
            self.done = True
            ctx.request_rollback("test", skip_batches=0)

    def __getattr__(self, name):  # every other hook: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_a_rollback_restores_the_heads_with_the_model_and_replays_the_same_steps_exactly(mm_work, tmp_path):
    cfg = _cfg(mm_work, tmp_path / "run", "train.steps=6", "train.val_every=100", "checkpoint.every=4", *LOSSES,
               "multimodal.learn_temperature=true", "multimodal.eval_at_end=false")
    probe = _RollBackOnceAt(6)
    summary = train(cfg, callbacks=[probe])
    assert [s for s, *_ in probe.seen] == [1, 2, 3, 4, 5, 6, 5, 6]  # back to the step-4 checkpoint once
    first, replay = probe.seen[4:6], probe.seen[6:]
    assert not torch.equal(probe.seen[3][2], first[1][2]) and probe.seen[3][3] != first[1][3]  # the heads trained
    for (s, loss, w, tau), (s2, loss2, w2, tau2) in zip(first, replay):
        assert (s, loss, tau) == (s2, loss2, tau2) and torch.equal(w, w2)  # head, τ and their Adam state came back
    assert summary["losses"] == [loss for _, loss, *_ in probe.seen[:4] + replay]


@pytest.mark.slow
def test_fsdp2_trains_the_heads_inside_the_sharded_model_and_resumes_exactly(mm_work, tmp_path):
    """2 processes (gloo): the heads are sharded, reduced and checkpointed with the model; a resume repeats the losses."""
    from test_distributed import keep_up_to, launch
    from test_multimodal import CODES, N_GROUPS, N_SAMPLES

    mm = [*CODES, f"multimodal.data={mm_work / 'mm_data'}", f"multimodal.demo_samples={N_SAMPLES}",
          f"multimodal.demo_groups={N_GROUPS}", "multimodal.heldout_fraction=0.25",
          f"train.tokens={mm_work / 'mm_tokens'}", "train.log_every=1", *ROWS, "train.micro_batch=4", *LOSSES,
          "multimodal.learn_temperature=true", "train.parallel=fsdp2", "train.steps=4", "checkpoint.every=2"]

    def run(run_dir):
        proc = launch(mm_work, run_dir, *mm)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-4000:]
        return _train_records(run_dir)

    full = run(tmp_path / "full")
    assert len(full) == 4 and all(np.isfinite([r["loss/infonce"], r["loss/action"]]).all() for r in full)
    assert len({r["infonce/temperature"] for r in full}) == 4  # τ is stepped by the one optimizer
    state = ckpt.load_model_state(ckpt.latest_checkpoint(tmp_path / "full"),
                                  {"mm.action.proj.weight": torch.zeros(1, 32), "mm.tau.log_tau": torch.zeros(1)})
    assert float(state["mm.tau.log_tau"].exp()[0]) == pytest.approx(full[-1]["infonce/temperature"], rel=1e-6)
    resumed = run(keep_up_to(tmp_path / "full", tmp_path / "split", 2))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]


def test_a_run_saved_with_the_head_outside_the_model_is_refused_in_one_line_and_still_evaluates(mm_work, tmp_path):
    from pretrainlab.errors import UserError
    from pretrainlab.multimodal.evaluate import eval_run
    from pretrainlab.multimodal.losses import ActionHead
    from pretrainlab.multimodal.train_callback import to_json

    cfg = _cfg(mm_work, tmp_path / "run", "train.steps=2", "train.val_every=100", "checkpoint.every=2", *LOSSES,
               "multimodal.eval_at_end=false")
    train(cfg)
    path = ckpt.latest_checkpoint(cfg.run_dir)  # rewrite it as an older pretrainlab saved it
    model = torch.load(path / "model.pt", weights_only=True)
    torch.save({k: v for k, v in model.items() if not k.startswith("mm.")}, path / "model.pt")
    state = json.loads((path / "state.json").read_text())
    state["callbacks"]["MultimodalLosses"] = {"head": to_json(ActionHead(cfg.model.d_model).state_dict())}
    (path / "state.json").write_text(json.dumps(state))
    (path / "COMPLETE").write_text(json.dumps({"step": 2}))
    with pytest.raises(UserError, match="older pretrainlab.*start a new run.name"):
        train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 4})}))
    assert eval_run(cfg.run_dir)["action"]["mse_head"] is not None  # `mm eval` reads the old head
