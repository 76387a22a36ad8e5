"""State-dict adapters: our parameter names <-> a Hugging Face architecture, one adapter per model family.

As in torchtitan, each model family gets an adapter beside its definition's
conventions: ``hf_config`` gives the transformers ``config.json`` dict,
``to_hf``/``from_hf`` rename (and, where layouts differ, reshape) tensors.
``adapter_for(model_cfg)`` picks the first registered adapter whose ``matches``
accepts the config; the dense Llama adapter is the fallback. An MoE adapter
(``moe_adapter.py``: Mixtral / Qwen2-MoE) registers itself with
``register_adapter`` and is tried first.

Dense mapping (ours -> ``LlamaForCausalLM``), checked against transformers'
modeling_llama: our RoPE rotates the two halves of each head (``rotate_half``,
HF's layout), so q/k weights need no permutation (Meta's original interleaved
checkpoints do); GQA repeats each KV head ``n_heads // n_kv_heads`` times
consecutively (``repeat_interleave``), which is HF's ``repeat_kv``; tied
embeddings omit ``lm_head.weight`` and set ``tie_word_embeddings``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

import torch


class StateDictAdapter(Protocol):
    architecture: str

    def hf_config(self, model_cfg, special_ids: dict[str, int], dtype: str) -> dict[str, Any]: ...

    def to_hf(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def from_hf(self, hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


_LAYER_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.w_gate.weight": "mlp.gate_proj.weight",
    "mlp.w_up.weight": "mlp.up_proj.weight",
    "mlp.w_down.weight": "mlp.down_proj.weight",
}
_TOP_MAP = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight", "lm_head.weight": "lm_head.weight"}
_OURS_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


class LlamaAdapter:
    """Our dense Transformer <-> transformers ``LlamaForCausalLM``."""

    architecture = "LlamaForCausalLM"

    def __init__(self, model_cfg):
        self.cfg = model_cfg

    @staticmethod
    def matches(model_cfg) -> bool:
        return True

    def hf_config(self, model_cfg, special_ids: dict[str, int], dtype: str) -> dict[str, Any]:
        c = model_cfg
        return {
            "architectures": [self.architecture],
            "model_type": "llama",
            "vocab_size": int(c.vocab_size),
            "hidden_size": c.d_model,
            "intermediate_size": c.ffn_dim,
            "num_hidden_layers": c.n_layers,
            "num_attention_heads": c.n_heads,
            "num_key_value_heads": c.kv_heads,
            "head_dim": c.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": c.max_seq_len,
            "rms_norm_eps": c.norm_eps,
            # both spellings: transformers < 5 reads rope_theta, >= 5 rope_parameters
            "rope_theta": c.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
            "rope_scaling": None,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "initializer_range": c.init_std,
            "tie_word_embeddings": bool(c.tie_embeddings),
            "use_cache": True,
            "bos_token_id": special_ids["bos"],
            "eos_token_id": special_ids["eos"],
            "pad_token_id": special_ids["pad"],
            "torch_dtype": dtype,
            "dtype": dtype,
        }

    def to_hf(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, tensor in state.items():
            if name.startswith("rope_"):
                continue  # non-persistent buffers (recomputed by both sides)
            if name == "lm_head.weight" and self.cfg.tie_embeddings:
                continue
            m = _OURS_LAYER.match(name)
            if m and m.group(2) in _LAYER_MAP:
                out[f"model.layers.{m.group(1)}.{_LAYER_MAP[m.group(2)]}"] = tensor
            elif name in _TOP_MAP:
                out[_TOP_MAP[name]] = tensor
            else:
                raise KeyError(f"no Hugging Face name for parameter {name!r}; the Llama adapter does not cover it")
        return out

    def from_hf(self, hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inv_layer = {v: k for k, v in _LAYER_MAP.items()}
        inv_top = {v: k for k, v in _TOP_MAP.items()}
        out: dict[str, torch.Tensor] = {}
        for name, tensor in hf_state.items():
            m = _HF_LAYER.match(name)
            if m and m.group(2) in inv_layer:
                out[f"layers.{m.group(1)}.{inv_layer[m.group(2)]}"] = tensor
            elif name in inv_top:
                out[inv_top[name]] = tensor
            elif name.endswith("rotary_emb.inv_freq"):
                continue
            else:
                raise KeyError(f"unexpected Hugging Face parameter {name!r} for a Llama model")
        if self.cfg.tie_embeddings:
            out["lm_head.weight"] = out["embed.weight"]
        return out


_REGISTRY: list[tuple[Callable[[Any], bool], Callable[[Any], StateDictAdapter]]] = []


def register_adapter(matches: Callable[[Any], bool], factory: Callable[[Any], StateDictAdapter]) -> None:
    """Register an adapter for model configs accepted by ``matches`` (tried before the dense fallback)."""
    _REGISTRY.insert(0, (matches, factory))


def adapter_for(model_cfg) -> StateDictAdapter:
    for matches, factory in _REGISTRY:
        if matches(model_cfg):
            return factory(model_cfg)
    return LlamaAdapter(model_cfg)


from pretrainlab.export import moe_adapter as _moe_adapter  # noqa: E402,F401  (registers the MoE adapters)
