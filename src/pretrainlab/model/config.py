"""The `model` config section, owned by this package.

``pretrainlab.config.ProjectConfig`` gathers every package's section; this module imports
nothing from pretrainlab but the ``Section`` base (and other packages' section modules), so
``pretrainlab.config`` can import it without a circle.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from pretrainlab.configsection import Section


class MoEConfig(Section):
    """Mixture-of-Experts feed-forward (model.moe): token-choice top-k routing over SwiGLU experts."""

    num_experts: int = Field(8, ge=2, description="Routed experts per MoE layer.")
    top_k: int = Field(2, ge=1, description="Experts each token is sent to.")
    expert_hidden: int | None = Field(None, ge=1, description="SwiGLU hidden size of one expert; default model.ffn_dim.")
    num_shared_experts: int = Field(0, ge=0, description="Always-on experts (same size) added to every token's output.")
    layers: list[int] | None = Field(None, description="Indices of the decoder blocks whose MLP is MoE; default all.")
    capacity_factor: float = Field(
        1.25, gt=0, description="Training: expert capacity = ceil(factor * tokens * top_k / num_experts) per micro-batch; "
        "overflow is dropped. Evaluation and generation never drop."
    )
    dropless: bool = Field(False, description="Never drop tokens (capacity_factor ignored).")
    normalize_top_k: bool = Field(True, description="Renormalize the top-k gate weights to sum to 1 (Mixtral).")
    router_jitter: float = Field(
        0.0, ge=0, lt=1, description="Training-only multiplicative noise U(1-eps, 1+eps) on the router input (0 = off)."
    )
    aux_loss_coef: float = Field(0.01, ge=0, description="Weight of the Switch load-balancing loss (mean over MoE layers).")
    z_loss_coef: float = Field(0.001, ge=0, description="Weight of the router z-loss mean(logsumexp(logits)^2).")
    dispatch: Literal["auto", "grouped_mm", "bmm", "loop"] = Field(
        "auto",
        description="Expert compute after sort-by-expert: torch._grouped_mm, padded bmm, or a loop over experts; "
        "auto: grouped_mm on CUDA in bf16, else bmm (fastest on the CPU, see docs/BENCHMARKS.md).",
    )

    @model_validator(mode="after")
    def _k_fits(self) -> "MoEConfig":
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) must not exceed num_experts ({self.num_experts})")
        return self


class ModelConfig(Section):
    """Llama-style decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention."""

    vocab_size: int | None = Field(None, ge=2, description="Default: the tokenizer's vocabulary size.")
    d_model: int = Field(256, ge=8, description="Hidden size.")
    n_layers: int = Field(4, ge=1, description="Decoder blocks.")
    n_heads: int = Field(4, ge=1, description="Query heads.")
    n_kv_heads: int | None = Field(None, ge=1, description="Key/value heads (GQA); default n_heads.")
    ffn_hidden: int | None = Field(None, ge=1, description="SwiGLU hidden size; default 8/3*d_model rounded up to 64.")
    max_seq_len: int = Field(256, ge=8, description="Longest sequence (RoPE table size).")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base.")
    norm_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon.")
    tie_embeddings: bool = Field(True, description="Share the input embedding and output projection.")
    init_std: float = Field(0.02, gt=0, description="Std of the normal init; residual projections scaled by 1/sqrt(2*layers).")
    moe: MoEConfig | None = Field(None, description="Mixture-of-Experts MLPs (see model.moe.*); null = dense SwiGLU everywhere.")

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelConfig":
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("head dimension d_model/n_heads must be even for RoPE")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({kv})")
        if self.moe is not None and self.moe.layers is not None:
            bad = [i for i in self.moe.layers if not 0 <= i < self.n_layers]
            if bad or len(set(self.moe.layers)) != len(self.moe.layers):
                raise ValueError(f"moe.layers {self.moe.layers} must be distinct block indices in 0..{self.n_layers - 1}")
        return self

    @property
    def moe_layers(self) -> list[int]:
        """Indices of the blocks whose MLP is a mixture of experts (empty for a dense model)."""
        if self.moe is None:
            return []
        return sorted(self.moe.layers) if self.moe.layers is not None else list(range(self.n_layers))

    @property
    def expert_dim(self) -> int:
        """SwiGLU hidden size of one expert."""
        return (self.moe.expert_hidden if self.moe and self.moe.expert_hidden else None) or self.ffn_dim

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        return int(math.ceil(8 * self.d_model / 3 / 64) * 64)
