"""State-dict adapters for our MoE models: ``MixtralForCausalLM`` and ``Qwen2MoeForCausalLM``.

Which one (checked against transformers' modeling_mixtral / modeling_qwen2_moe):

- Mixtral when every block is MoE, there are no shared experts and the top-k
  weights are renormalized (Mixtral always renormalizes).
- Qwen2-MoE otherwise: its ``mlp_only_layers`` holds our dense blocks,
  ``norm_topk_prob`` our ``normalize_top_k``, and its single shared expert our
  fused shared experts. Qwen2-MoE multiplies the shared expert's output by
  ``sigmoid(shared_expert_gate(x))``; we have no such gate, so the exported gate
  is all zeros (sigmoid = 1/2 exactly) and the shared down projection is doubled
  (exact in floating point). A model without shared experts gets a width-1
  shared expert whose down projection is zero.

Weights are written in the per-expert checkpoint layout
(``experts.{j}.w1/w2/w3`` for Mixtral, ``experts.{j}.gate_proj/up_proj/down_proj``
for Qwen2-MoE) that every transformers version reads; transformers 5 fuses them
on load. Both HF models are dropless, so the export reproduces our model's
logits whenever our capacity drops nothing (always with ``model.moe.dropless``).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from pretrainlab.export.adapters import LlamaAdapter, register_adapter

_MOE_PARAM = re.compile(r"^layers\.(\d+)\.mlp\.(router\.weight|experts\.w_gate|experts\.w_up|experts\.w_down|"
                        r"shared\.w_gate\.weight|shared\.w_up\.weight|shared\.w_down\.weight)$")


class _MoEAdapterBase(LlamaAdapter):
    model_type = ""
    block = ""  # HF name of the MoE block inside a decoder layer
    expert_names: dict[str, str] = {}

    def moe_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def hf_config(self, model_cfg, special_ids: dict[str, int], dtype: str) -> dict[str, Any]:
        out = super().hf_config(model_cfg, special_ids, dtype)
        out.pop("mlp_bias", None)
        out.update(architectures=[self.architecture], model_type=self.model_type, output_router_logits=False,
                   router_aux_loss_coef=model_cfg.moe.aux_loss_coef, **self.moe_config())
        return out

    def _shared_to_hf(self, prefix: str, layer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}

    def to_hf(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rest = {k: v for k, v in state.items() if not _MOE_PARAM.match(k)}
        out = super().to_hf(rest)
        per_layer: dict[int, dict[str, torch.Tensor]] = {}
        for name, tensor in state.items():
            m = _MOE_PARAM.match(name)
            if m:
                per_layer.setdefault(int(m.group(1)), {})[m.group(2)] = tensor
        for i, layer in sorted(per_layer.items()):
            prefix = f"model.layers.{i}.{self.block}"
            out[f"{prefix}.gate.weight"] = layer["router.weight"]
            for ours, theirs in self.expert_names.items():
                for j, w in enumerate(layer[f"experts.{ours}"]):
                    out[f"{prefix}.experts.{j}.{theirs}.weight"] = w
            out.update(self._shared_to_hf(prefix, layer))
        return out

    def from_hf(self, hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        block = re.compile(rf"^model\.layers\.(\d+)\.{re.escape(self.block)}\.(.+)$")
        moe = set(self.cfg.moe_layers)
        ours = {k for k in hf_state if (m := block.match(k)) and int(m.group(1)) in moe}
        out = super().from_hf({k: v for k, v in hf_state.items() if k not in ours})
        experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
        inverse = {v: k for k, v in self.expert_names.items()}
        for name, tensor in hf_state.items():
            if name not in ours:
                continue
            m = block.match(name)
            i, tail = int(m.group(1)), m.group(2)
            e = re.match(r"^experts\.(\d+)\.(\w+)\.weight$", tail)
            if tail == "gate.weight":
                out[f"layers.{i}.mlp.router.weight"] = tensor
            elif e and e.group(2) in inverse:
                experts.setdefault((i, inverse[e.group(2)]), {})[int(e.group(1))] = tensor
            else:
                out.update(self._shared_from_hf(i, tail, tensor))
        for (i, ours), by_index in experts.items():
            out[f"layers.{i}.mlp.experts.{ours}"] = torch.stack([by_index[j] for j in sorted(by_index)])
        return out

    def _shared_from_hf(self, layer: int, tail: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        raise KeyError(f"unexpected Hugging Face parameter in layer {layer}: {tail!r}")


class MixtralAdapter(_MoEAdapterBase):
    """Our MoE Transformer <-> transformers ``MixtralForCausalLM``."""

    architecture = "MixtralForCausalLM"
    model_type = "mixtral"
    block = "block_sparse_moe"
    expert_names = {"w_gate": "w1", "w_down": "w2", "w_up": "w3"}

    @staticmethod
    def matches(model_cfg) -> bool:
        m = model_cfg.moe
        return (m is not None and m.num_shared_experts == 0 and m.normalize_top_k
                and model_cfg.moe_layers == list(range(model_cfg.n_layers)))

    def moe_config(self) -> dict[str, Any]:
        m = self.cfg.moe
        return {"num_local_experts": m.num_experts, "num_experts_per_tok": m.top_k,
                "intermediate_size": self.cfg.expert_dim, "router_jitter_noise": 0.0, "sliding_window": None}


class Qwen2MoeAdapter(_MoEAdapterBase):
    """Our MoE Transformer (shared experts, dense blocks or unnormalized top-k) <-> ``Qwen2MoeForCausalLM``."""

    architecture = "Qwen2MoeForCausalLM"
    model_type = "qwen2_moe"
    block = "mlp"
    expert_names = {"w_gate": "gate_proj", "w_up": "up_proj", "w_down": "down_proj"}

    @staticmethod
    def matches(model_cfg) -> bool:
        return model_cfg.moe is not None

    @property
    def shared_width(self) -> int:
        return self.cfg.moe.num_shared_experts * self.cfg.expert_dim

    def moe_config(self) -> dict[str, Any]:
        m, c = self.cfg.moe, self.cfg
        return {
            "num_experts": m.num_experts, "num_experts_per_tok": m.top_k, "norm_topk_prob": m.normalize_top_k,
            "moe_intermediate_size": c.expert_dim, "intermediate_size": c.ffn_dim,
            "shared_expert_intermediate_size": self.shared_width or 1, "decoder_sparse_step": 1,
            "mlp_only_layers": [i for i in range(c.n_layers) if i not in c.moe_layers],
            "qkv_bias": False, "use_sliding_window": False, "sliding_window": None, "max_window_layers": c.n_layers,
        }

    def _shared_to_hf(self, prefix: str, layer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        router = layer["router.weight"]
        d = router.shape[1]
        out = {f"{prefix}.shared_expert_gate.weight": torch.zeros(1, d, dtype=router.dtype)}  # sigmoid(0) = 1/2
        if self.shared_width:
            out[f"{prefix}.shared_expert.gate_proj.weight"] = layer["shared.w_gate.weight"]
            out[f"{prefix}.shared_expert.up_proj.weight"] = layer["shared.w_up.weight"]
            out[f"{prefix}.shared_expert.down_proj.weight"] = layer["shared.w_down.weight"] * 2
        else:  # no shared experts: a width-1 expert that contributes exactly zero
            out[f"{prefix}.shared_expert.gate_proj.weight"] = torch.zeros(1, d, dtype=router.dtype)
            out[f"{prefix}.shared_expert.up_proj.weight"] = torch.zeros(1, d, dtype=router.dtype)
            out[f"{prefix}.shared_expert.down_proj.weight"] = torch.zeros(d, 1, dtype=router.dtype)
        return out

    def _shared_from_hf(self, layer: int, tail: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        if tail == "shared_expert_gate.weight" or not self.shared_width:
            return {}
        names = {"shared_expert.gate_proj.weight": "w_gate", "shared_expert.up_proj.weight": "w_up",
                 "shared_expert.down_proj.weight": "w_down"}
        if tail not in names:
            raise KeyError(f"unexpected Hugging Face parameter in layer {layer}: {tail!r}")
        value = tensor / 2 if names[tail] == "w_down" else tensor
        return {f"layers.{layer}.mlp.shared.{names[tail]}.weight": value}


register_adapter(Qwen2MoeAdapter.matches, Qwen2MoeAdapter)
register_adapter(MixtralAdapter.matches, MixtralAdapter)  # registered last, so tried first
