"""Training a MoE model: loss falls with balanced experts, the monitor logs routing health, collapse is flagged."""

import json

import pytest
import torch

from pretrainlab.config import MoEMonitorConfig
from pretrainlab.fsio import iter_jsonl
from pretrainlab.model.moe import MoE
from pretrainlab.monitor.report import write_report
from pretrainlab.train.moe_monitor import collapse_reasons, load_summary
from pretrainlab.recipes import train

MOE = ["model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.expert_hidden=48"]


def train_records(run_dir):
    return [r for r in iter_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def test_load_summary_and_collapse_rule_on_hand_made_loads():
    s = load_summary([10, 10, 10, 10], top_fraction=0.25)
    assert s == {"cv": 0.0, "max_load": 1.0, "min_load": 1.0, "top_share": 0.25}
    s = load_summary([70, 10, 10, 10], top_fraction=0.25)
    assert s["top_share"] == pytest.approx(0.7) and s["max_load"] == pytest.approx(2.8)
    assert s["cv"] == pytest.approx(1.0392, abs=1e-4)
    cfg = MoEMonitorConfig(top_fraction=0.25)
    assert collapse_reasons(s, 0.0, cfg) == ["top_share"]
    assert collapse_reasons(load_summary([10, 10, 10, 10], 0.25), 0.002, cfg) == ["drop_rate"]
    assert collapse_reasons(load_summary([12, 9, 10, 9], 0.25), 0.0, cfg) == []


def test_moe_run_lowers_loss_keeps_experts_balanced_and_logs_routing_health(tiny_cfg):
    cfg = tiny_cfg(*MOE, "train.steps=30", "train.val_every=15", "optim.lr=5e-3", "log.tensorboard=true",
                   "moe_monitor.max_drop_rate=1.0")
    summary = train(cfg)
    assert summary["final_val_loss"] < summary["first_val_loss"] - 0.5
    records = train_records(cfg.run_dir)
    last = records[-1]
    for i in (0, 1):
        loads = last[f"moe/layer{i}/tokens_per_expert"]
        assert len(loads) == 4 and sum(loads) == 4 * 32 * 2 * 2  # micro-batches x tokens x top_k, before dropping
        assert last[f"moe/layer{i}/cv"] < 0.5, loads  # balanced: no expert far from its share
        assert 0.0 <= last[f"moe/layer{i}/drop_rate"] < 0.2
        assert last[f"moe/layer{i}/aux_loss"] >= 1.0 - 1e-6
        assert last[f"moe/layer{i}/min_load"] <= 1.0 <= last[f"moe/layer{i}/max_load"]
        assert len(last[f"moe/layer{i}/router_grad_norm"]) == 4 and last[f"moe/layer{i}/router_grad_norm_max"] > 0
        assert last[f"moe/layer{i}/logit_var"] >= 0
    # the logged loss includes the weighted aux terms; ce_loss is the cross-entropy part alone
    coef_aux, coef_z = cfg.model.moe.aux_loss_coef, cfg.model.moe.z_loss_coef
    assert last["ce_loss"] == pytest.approx(last["loss"] - coef_aux * last["moe/aux_loss"] - coef_z * last["moe/z_loss"])
    assert last["ce_loss"] < last["loss"]
    assert list((cfg.run_dir / "tb").glob("*.moe")), "expert-load histograms for TensorBoard"
    html = write_report(cfg.run_dir).read_text()
    assert "Mixture of experts" in html and "Expert load, layer 1" in html and "x uniform</title>" in html
    meta = json.loads((cfg.run_dir / "meta.json").read_text())
    assert meta["params"]["active"] < meta["params"]["total"]


def test_a_forced_routing_collapse_is_an_event_and_an_alert(tiny_cfg, monkeypatch):
    original = MoE.route

    def collapsed(self, x):  # the router's logits favour expert 0 by a wide margin
        logits, _, _, _ = original(self, x)
        logits = logits + torch.tensor([8.0, 0.0, 0.0, 0.0])
        probs = logits.softmax(-1)
        top_w, top_i = probs.topk(self.top_k, dim=-1)
        return logits, probs, top_w / top_w.sum(-1, keepdim=True), top_i

    monkeypatch.setattr(MoE, "route", collapsed)
    cfg = tiny_cfg(*MOE, "model.moe.top_k=1", "train.steps=4", "train.val_every=100", "moe_monitor.patience=2",
                   "moe_monitor.top_fraction=0.25")
    train(cfg)
    events = [e for e in iter_jsonl(cfg.run_dir / "events.jsonl") if e["event"] == "moe_routing_collapse"]
    top = [e for e in events if e["reason"] == "top_share"]
    assert {e["layer"] for e in top} == {0, 1}
    assert len(top) == 2  # fired once per layer after `patience` steps, not every step
    assert top[0]["top_share"] > 0.9
    drops = [e for e in events if e["reason"] == "drop_rate"]
    assert drops and drops[0]["drop_rate"] > 0.5  # capacity 1.25 cannot hold a collapsed expert
    alerts = list(iter_jsonl(cfg.run_dir / "alerts.jsonl"))
    assert any(a["rule"] == "moe_routing_collapse" and "layer 0" in a["message"] for a in alerts)
    assert train_records(cfg.run_dir)[-1]["moe/collapsed_layers"] == 2
    # resuming the still-collapsed run does not raise the same alarm again (the rule's state is checkpointed)
    train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 6})}), resume="auto")
    again = [e for e in iter_jsonl(cfg.run_dir / "events.jsonl") if e["event"] == "moe_routing_collapse"]
    assert len(again) == len(events)


def test_a_dense_run_logs_no_moe_metrics(tiny_cfg):
    cfg = tiny_cfg("train.steps=2", "train.val_every=100")
    train(cfg)
    assert not any(k.startswith("moe/") for k in train_records(cfg.run_dir)[-1])
