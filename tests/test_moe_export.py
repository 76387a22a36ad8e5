"""MoE export: transformers loads the folder offline (Mixtral or Qwen2-MoE) with logits equal to ours."""

from __future__ import annotations

import json

import pytest
import torch

from pretrainlab.config import load_config
from pretrainlab.export.adapters import adapter_for
from pretrainlab.export.hf import export_hf, load_hf_state
from pretrainlab.export.moe_adapter import MixtralAdapter, Qwen2MoeAdapter
from pretrainlab.model.transformer import Transformer
from pretrainlab.tokenizer.vocab import load_tokenizer

transformers = pytest.importorskip("transformers")


def moe_model(vocab: int, *sets: str) -> Transformer:
    cfg = load_config(None, [f"model.vocab_size={vocab}", "model.d_model=64", "model.n_layers=3", "model.n_heads=4",
                             "model.n_kv_heads=2", "model.max_seq_len=64", "model.moe.num_experts=4",
                             "model.moe.top_k=2", "model.moe.expert_hidden=48", "model.moe.capacity_factor=1.0", *sets]).model
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    with torch.no_grad():  # make every layer, router and expert matter
        for p in model.parameters():
            p.mul_(3.0) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return model


CASES = {
    "mixtral": (["model.moe.dropless=true"], MixtralAdapter, "mixtral"),
    "mixtral, trained with capacity (eval never drops)": ([], MixtralAdapter, "mixtral"),
    "qwen2_moe shared experts": (["model.moe.num_shared_experts=2"], Qwen2MoeAdapter, "qwen2_moe"),
    "qwen2_moe dense block, unnormalized top-k": (["model.moe.layers=[0,2]", "model.moe.normalize_top_k=false",
                                                   "model.tie_embeddings=false"], Qwen2MoeAdapter, "qwen2_moe"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_transformers_loads_the_moe_export_offline_with_equal_logits(case, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sets, adapter_cls, model_type = CASES[case]
    tok = load_tokenizer(tiny_data / "tokenizer")
    model = moe_model(tok.vocab_size, *sets)
    assert isinstance(adapter_for(model.cfg), adapter_cls)
    out = tmp_path / "hf"
    record = export_hf(model, tok, out)
    assert record["architecture"] == adapter_cls.architecture
    assert json.loads((out / "config.json").read_text())["model_type"] == model_type
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True, dtype=torch.float32).eval()
    ids = tok.encode("def f(x):\n    return the model reads tokens and predicts the next one")
    x = torch.tensor([ids, ids[::-1]])
    with torch.no_grad():
        ours, theirs = model(x)[0], hf(x).logits
    assert ours.abs().max() > 1
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize("case", list(CASES))
def test_moe_adapter_round_trip_restores_every_tensor(case, tiny_data, tmp_path):
    sets, _, _ = CASES[case]
    tok = load_tokenizer(tiny_data / "tokenizer")
    model = moe_model(tok.vocab_size, *sets)
    export_hf(model, tok, tmp_path / "hf")
    back = adapter_for(model.cfg).from_hf(load_hf_state(tmp_path / "hf"))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("rope_")}
    if model.cfg.tie_embeddings:
        state.pop("lm_head.weight", None), back.pop("lm_head.weight", None)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in back)
