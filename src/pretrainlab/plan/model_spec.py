"""What the planner needs to know about a model: shape, total and active parameters.

A spec comes from the `model` section of any trainer YAML (dense counts from
``model.transformer.count_params``, so the planner and MFU agree) or from a
preset. Presets copy published shapes so their counts can be checked:
1b = Llama-3.2-1B, 7b = Llama-2-7B, 14b = Qwen2.5-14B (without its q/k/v
biases), 30b = LLaMA-30B (32.5B), moe-10b = a top-2-of-16 MoE sized to the plan
documents' "10B total, ~2.5B active".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from pretrainlab.config import ModelConfig
from pretrainlab.errors import ConfigError
from pretrainlab.model.transformer import count_params


@dataclass(frozen=True)
class ModelSpec:
    name: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    kv_heads: int
    ffn: int  # dense SwiGLU hidden size (layers without MoE)
    tie_embeddings: bool
    moe_layers: int = 0
    n_experts: int = 0
    top_k: int = 0
    expert_ffn: int = 0
    shared_ffn: int = 0  # total hidden size of always-on shared experts in an MoE layer
    capacity_factor: float = 1.0
    total_override: float | None = None
    active_override: float | None = None

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def is_moe(self) -> bool:
        return self.moe_layers > 0 and self.n_experts > 0

    def to_dict(self) -> dict:
        return asdict(self)

    # ---- parameter accounting
    def attention_params(self) -> int:
        d, hd = self.d_model, self.head_dim
        return 2 * d * self.n_heads * hd + 2 * d * self.kv_heads * hd

    def dense_mlp_params(self) -> int:
        return 3 * self.d_model * self.ffn

    def expert_params(self) -> int:
        """One routed expert (SwiGLU)."""
        return 3 * self.d_model * self.expert_ffn

    def counts(self) -> dict[str, float]:
        """total, active (per token), embedding, matmul_active (6N's N) and expert parameters."""
        d, L, v = self.d_model, self.n_layers, self.vocab_size
        norms = 2 * d
        dense_layers = L - self.moe_layers
        moe_fixed = self.attention_params() + norms + 3 * d * self.shared_ffn + d * self.n_experts  # + router
        embed = v * d
        head = 0 if self.tie_embeddings else v * d
        non_expert = embed + head + d + dense_layers * (self.attention_params() + self.dense_mlp_params() + norms)
        non_expert += self.moe_layers * moe_fixed
        experts_total = self.moe_layers * self.n_experts * self.expert_params()
        experts_active = self.moe_layers * self.top_k * self.expert_params()
        total = non_expert + experts_total
        active = non_expert + experts_active
        # The input embedding is a lookup, not a matmul; a tied output head is still a matmul.
        matmul_active = active - embed + (v * d if self.tie_embeddings else 0)
        out = {
            "total": float(total),
            "active": float(active),
            "embedding": float(embed),
            "matmul_active": float(matmul_active),
            "experts": float(experts_total),
            "derived_from": "architecture",
        }
        if self.total_override is not None or self.active_override is not None:
            t = self.total_override if self.total_override is not None else total
            a = self.active_override if self.active_override is not None else (t if not self.is_moe else active)
            if a > t:
                raise ConfigError(f"active parameters ({a:.3g}) exceed total ({t:.3g}); fix plan.active_params")
            # Given counts are used as they are: 6N with N = the active count given.
            out.update(total=float(t), active=float(a), matmul_active=float(a),
                       experts=float(experts_total * t / total) if total else 0.0,
                       derived_from="plan.total_params/active_params")
        return out


PRESETS: dict[str, ModelSpec] = {
    "1b": ModelSpec("1b (Llama-3.2-1B shape)", 128_256, 2048, 16, 32, 8, 8192, True),
    "7b": ModelSpec("7b (Llama-2-7B shape)", 32_000, 4096, 32, 32, 32, 11008, False),
    "14b": ModelSpec("14b (Qwen2.5-14B shape)", 152_064, 5120, 48, 40, 8, 13824, False),
    "30b": ModelSpec("30b (LLaMA-30B shape)", 32_000, 6656, 60, 52, 52, 17920, False),
    "moe-10b": ModelSpec(
        "moe-10b (top-2 of 16 experts)", 128_256, 3072, 24, 24, 8, 0, False,
        moe_layers=24, n_experts=16, top_k=2, expert_ffn=2432, capacity_factor=1.0,
    ),
}


def given_counts(total: float, active: float | None = None) -> dict[str, float | str]:
    """Counts of a model known only by its parameter counts (no architecture): 6N's N is the active count."""
    active = total if active is None else active
    if active > total:
        raise ConfigError(f"active parameters ({active:.3g}) exceed total ({total:.3g}); fix plan.active_params")
    return {"total": float(total), "active": float(active), "embedding": None, "matmul_active": float(active),
            "experts": None, "derived_from": "plan.total_params/active_params (no architecture)"}


def spec_from_preset(name: str, total: float | None = None, active: float | None = None) -> ModelSpec:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    spec = PRESETS[name]
    return _with_overrides(spec, total, active)


def _with_overrides(spec: ModelSpec, total: float | None, active: float | None) -> ModelSpec:
    if total is None and active is None:
        return spec
    return replace(spec, total_override=total, active_override=active)


def spec_from_model_config(cfg: ModelConfig, name: str = "model section",
                           total: float | None = None, active: float | None = None) -> ModelSpec:
    """A spec from the trainer's model section; vocab_size must be known."""
    if cfg.vocab_size is None:
        raise ConfigError(
            "the planner needs model.vocab_size (the trainer takes it from the tokenizer); "
            "set it with --set model.vocab_size=32000, plan a preset with --model-preset 1b|7b|14b|30b|moe-10b, "
            "or plan by parameter count with --total-params"
        )
    kwargs: dict = {}
    if cfg.moe is not None:
        m = cfg.moe
        kwargs = dict(moe_layers=len(cfg.moe_layers), n_experts=m.num_experts, top_k=m.top_k,
                      expert_ffn=cfg.expert_dim, shared_ffn=m.num_shared_experts * cfg.expert_dim,
                      capacity_factor=1.0 if m.dropless else m.capacity_factor)
    spec = ModelSpec(
        name, cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.kv_heads, cfg.ffn_dim, cfg.tie_embeddings,
        **kwargs,
    )
    # The trainer's own accounting (MFU) is the reference; the planner must agree with it.
    ref, mine = count_params(cfg), spec.counts()
    if int(mine["total"]) != ref["total"] or int(mine["active"]) != ref.get("active", ref["total"]):
        raise AssertionError(f"planner and model.transformer disagree on parameters: {mine} vs {ref}")
    return _with_overrides(spec, total, active)

