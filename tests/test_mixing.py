"""Data mixing, staged schedules, packing with document masks, and the loader's resumable state."""

import json

import numpy as np
import pytest
import torch

from pretrainlab.config import MixConfig, ModelConfig, PackingConfig, load_config
from pretrainlab.errors import ConfigError, DataError
from pretrainlab.model.transformer import Transformer, positions_in_document
from pretrainlab.train.loader import MixtureLoader
from pretrainlab.train.mixing import temperature_weights
from pretrainlab.train.packing import IGNORE, doc_ids_from_eos


def test_temperature_weights_follow_n_to_the_one_over_t():
    counts = {"a": 900, "b": 100}
    assert temperature_weights(counts, 1.0) == pytest.approx({"a": 0.9, "b": 0.1})
    w = temperature_weights(counts, 2.0)
    assert w["a"] == pytest.approx(30 / 40) and w["b"] == pytest.approx(10 / 40)
    w_hot = temperature_weights(counts, 100.0)
    assert abs(w_hot["a"] - 0.5) < 0.02


def loader(tokens_dir, mix=None, packing=None, **kw):
    kw.setdefault("seq_len", 32)
    kw.setdefault("micro_batch", 4)
    kw.setdefault("seed", 7)
    return MixtureLoader(tokens_dir, mix=mix or MixConfig(), packing=packing or PackingConfig(), **kw)


def test_realized_shares_converge_to_the_intended_weights(tiny_data):
    mix = MixConfig(weights={"prose": 0.75, "code": 0.25})
    ld = loader(tiny_data / "tokens", mix)
    for _ in range(300):
        ld.next_batch()
    shares = ld.shares()["main"]
    assert shares["realized"]["prose"] == pytest.approx(0.75, abs=0.04)
    assert shares["intended"]["code"] == pytest.approx(0.25)


def test_stages_switch_at_token_boundaries_and_log_the_transition(tiny_data):
    mix = MixConfig.model_validate({"stages": [
        {"name": "cold", "until_tokens": 32 * 40, "sources": ["prose"], "temperature": 1.2},
        {"name": "hot", "sources": ["code"]},
    ]})
    events = []
    ld = loader(tiny_data / "tokens", mix, on_event=lambda name, **kw: events.append((name, kw)))
    for _ in range(20):
        ld.next_batch()
    shares = ld.shares()
    assert shares["cold"]["realized"]["prose"] == 1.0 and shares["cold"]["tokens"] == 32 * 40
    assert shares["hot"]["realized"]["code"] == 1.0
    assert [e for e, _ in events] == ["mix_stage"]
    assert events[0][1]["previous"] == "cold" and events[0][1]["stage"] == "hot"


def test_stage_boundaries_must_increase():
    with pytest.raises(ConfigError, match="must increase"):
        load_config(None, ["mix.stages=[{name: a, until_tokens: 100}, {name: b, until_tokens: 50}, {name: c}]"])


def test_repetition_cap_warns_up_front_and_removes_an_exhausted_source(tiny_data):
    events = []
    mix = MixConfig(weights={"prose": 0.5, "code": 0.5}, max_epochs=1)
    counts = {s: n for s, n in loader(tiny_data / "tokens").token_counts.items()}
    with pytest.warns(UserWarning, match="repeated beyond mix.max_epochs"):
        ld = loader(tiny_data / "tokens", mix, total_tokens=4 * max(counts.values()),
                    on_event=lambda name, **kw: events.append((name, kw)))
    small = min(counts, key=counts.get)
    rows_needed = 3 * counts[small] // 32 + 10
    with pytest.raises(DataError, match="reached mix.max_epochs"):
        for _ in range(rows_needed * 2):
            ld.next_row()
    capped = [kw["source"] for name, kw in events if name == "mix_source_capped"]
    assert small in capped


def test_unknown_source_in_weights_is_a_clear_error(tiny_data):
    with pytest.raises(DataError, match="unknown source"):
        loader(tiny_data / "tokens", MixConfig(weights={"prose": 1, "poetry": 1}))


def test_loader_state_round_trips_through_json(tiny_data):
    for mode in ("concat", "best_fit"):
        a = loader(tiny_data / "tokens", packing=PackingConfig(mode=mode))
        for _ in range(5):
            a.next_batch()
        state = json.loads(json.dumps(a.state_dict()))
        expected = [a.next_batch() for _ in range(4)]
        b = loader(tiny_data / "tokens", packing=PackingConfig(mode=mode))
        b.load_state_dict(state)
        for want in expected:
            got = b.next_batch()
            assert torch.equal(got.inputs, want.inputs) and torch.equal(got.targets, want.targets)
            assert torch.equal(got.doc_ids, want.doc_ids)


def test_ranks_split_the_global_row_sequence_without_overlap(tiny_data):
    single = loader(tiny_data / "tokens", micro_batch=4)
    ranks = [loader(tiny_data / "tokens", micro_batch=2, rank=r, world=2) for r in range(2)]
    full = single.next_batch().inputs
    r0, r1 = (ld.next_batch().inputs for ld in ranks)
    assert torch.equal(full[0::2], r0) and torch.equal(full[1::2], r1)
    assert ranks[0].state_dict() == ranks[1].state_dict()


def test_doc_ids_start_a_new_document_after_each_eos():
    eos = 2
    row = np.array([5, 6, 2, 7, 2, 2, 8])
    assert doc_ids_from_eos(row, eos).tolist() == [0, 0, 0, 1, 1, 2, 3]
    pos = positions_in_document(torch.tensor([[0, 0, 0, 1, 1, 2, 3]]))
    assert pos.tolist() == [[0, 1, 2, 0, 1, 0, 0]]


def test_no_token_attends_across_a_document_boundary():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16))
    ids = torch.randint(3, 50, (1, 12))
    doc_ids = torch.tensor([[0] * 5 + [1] * 7])
    captured = {}

    def keep(_, __, out):
        out.retain_grad()
        captured["emb"] = out

    model.embed.register_forward_hook(keep)
    for masked in (True, False):
        model.zero_grad()
        logits, _ = model(ids, doc_ids=doc_ids if masked else None)
        logits[0, 9].sum().backward()  # a token of the second document
        grad_first_doc = captured["emb"].grad[0, :5].abs().sum().item()
        if masked:
            assert grad_first_doc == 0.0
            assert captured["emb"].grad[0, 5:10].abs().sum().item() > 0
        else:
            assert grad_first_doc > 0  # plain causal attention does leak: the mask is what stops it


def test_best_fit_keeps_documents_whole_and_ignores_padding(tiny_data):
    from pretrainlab.tokenizer.shards import ShardReader

    ld = loader(tiny_data / "tokens", MixConfig(weights={"prose": 1.0, "code": 0.0}),
                PackingConfig(mode="best_fit", best_fit_buffer=16), seq_len=1024, micro_batch=1)
    reader = ShardReader(tiny_data / "tokens", "prose", "train")
    docs = {tuple(reader.doc(i, with_eos=True).tolist()) for i in range(reader.num_docs)}
    assert max(len(d) for d in docs) <= 1025  # so no document needs splitting
    for _ in range(10):
        b = ld.next_batch()
        x, y, d = b.inputs[0], b.targets[0], b.doc_ids[0]
        pad = x == 0
        for doc in torch.unique(d[~pad]):
            piece = tuple(x[d == doc].tolist())
            if len(piece) < 200 and x[d == doc][-1] == 2:
                assert piece in docs  # a whole document, never split across rows
        assert (y[pad] == IGNORE).all()
    assert 0.5 < ld.packing_efficiency() <= 1.0


def test_training_logs_stage_transitions_and_reports_intended_vs_realized_shares(tiny_cfg):
    from pretrainlab.fsio import iter_jsonl
    from pretrainlab.monitor.report import write_report
    from pretrainlab.recipes import train

    cfg = tiny_cfg("train.steps=8", "train.val_every=4",
                   "mix.stages=[{name: cold, until_tokens: 1024, sources: [prose]}, {name: mid, temperature: 3}]")
    train(cfg)
    events = list(iter_jsonl(cfg.run_dir / "events.jsonl"))
    stage_events = [e for e in events if e["event"] == "mix_stage"]
    assert len(stage_events) == 1 and stage_events[0]["stage"] == "mid"
    shares = [e for e in events if e["event"] == "mix_shares"][-1]["stages"]
    assert shares["cold"]["realized"] == {"code": 0.0, "prose": 1.0}
    metrics = [r for r in iter_jsonl(cfg.run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert metrics[-1]["mix/stage"] == 1.0 and "mix/share/code" in metrics[-1]
    html = write_report(cfg.run_dir).read_text()
    assert "Data mixture" in html and "intended share" in html
