"""Llama-style decoder: RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention.

The model knows nothing of parallelism, logging or checkpoints. Attention goes
through ``scaled_dot_product_attention``; an optional ``positions`` tensor and
boolean ``attn_mask`` let a packer restart positions per document and block
attention across documents. ``KVCache`` makes generation O(n) per token.

The memory-bound ops (fp32 RMSNorm, rotary embedding, SwiGLU, and in a training
step the output projection with its cross-entropy) run through the hand-written
autograd functions of ``fused_ops``: same arithmetic, fewer passes and
temporaries (benchmarks/train_throughput.py measures the gain against
transformers' Llama).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pretrainlab.config import ModelConfig
from pretrainlab.model.moe import MoE
from pretrainlab.model.attention import attend, build_doc_mask
from pretrainlab.model.fused_ops import apply_rotary, cross_entropy, linear_cross_entropy, rms_norm, swiglu


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.float32 and self.weight.dtype == torch.float32:
            return rms_norm(x, self.weight, self.eps)  # fewer passes; closed-form backward
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(dtype)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (max_len, head_dim/2) for rotating query/key pairs."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (batch, heads, seq, head_dim) by per-position angles, half-split layout (as in HF Llama)."""
    if x.dtype == torch.float32:
        return apply_rotary(x, cos, sin)
    return apply_rotary(x.float(), cos, sin).to(x.dtype)


@dataclass
class KVCache:
    """Per-layer key/value tensors for incremental decoding."""

    keys: list[torch.Tensor | None]
    values: list[torch.Tensor | None]

    @classmethod
    def empty(cls, n_layers: int) -> "KVCache":
        return cls([None] * n_layers, [None] * n_layers)

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is not None:
            k = torch.cat((self.keys[layer], k), dim=2)
            v = torch.cat((self.values[layer], v), dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, attn_mask=None, cache: KVCache | None = None):
        b, t, _ = x.shape
        # Head counts from the projections' widths: a layer holding a slice of the heads runs that slice.
        q = self.wq(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
            if attn_mask is None and t != k.shape[2]:
                # Decoding with a cache: new queries sit at the end; causal w.r.t. cached keys.
                attn_mask = torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device).tril(k.shape[2] - t)
        y = attend(q, k, v, attn_mask)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w_gate = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.w_up = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.w_down = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def forward(self, x):
        gate, up = self.w_gate(x), self.w_up(x)
        if gate.dtype == torch.float32:
            return self.w_down(swiglu(gate, up))  # fused_ops: two fewer buffers in backward
        return self.w_down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MoE(cfg) if layer in cfg.moe_layers else SwiGLU(cfg)

    def forward(self, x, cos, sin, attn_mask=None, cache=None):
        x = _residual(x, self.attn(self.attn_norm(x), cos, sin, attn_mask, cache))
        if isinstance(self.mlp, MoE):
            return x + self.mlp(self.mlp_norm(x))
        return _residual(x, self.mlp(self.mlp_norm(x)))


def _residual(x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """x + branch, for a branch that ends in a linear layer.

    A linear layer does not keep its output for backward, so the sum can go into that output's buffer:
    one fewer (batch, seq, d_model) allocation per add, which is measurable on the CPU. Under autocast
    the branch is low precision; then the sum stays a new tensor in the residual stream's dtype. A branch
    that is a view (a wrapper unpacked the layer's output) is not ours to write either.
    """
    if branch.dtype == x.dtype and branch.shape == x.shape and not branch._is_view():
        return branch.add_(x)
    return x + branch


def positions_in_document(doc_ids: torch.Tensor) -> torch.Tensor:
    """Index of each token within its document (restarts at every document boundary)."""
    t = doc_ids.shape[-1]
    idx = torch.arange(t, device=doc_ids.device).expand_as(doc_ids)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    start_idx = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=-1).values
    return idx - start_idx


class Transformer(nn.Module):
    """Decoder-only language model. ``cfg.vocab_size`` must be set."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be set (normally from the tokenizer)")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        residual_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("wo.weight", "w_down.weight", "experts.w_down")):
                nn.init.normal_(p, 0.0, residual_std)
            else:
                nn.init.normal_(p, 0.0, std)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        ignore_index: int = -100,
        doc_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (logits, mean cross-entropy over non-ignored targets, or None).

        doc_ids: (batch, seq) document index per position of a packed row; when
        given, attention is block-diagonal causal and positions restart per
        document. positions: (batch, seq) indices into the RoPE table; default
        0..seq-1 (offset by the cache length when decoding). attn_mask: boolean
        (batch, 1, seq, seq) where True means "may attend".
        """
        b, t = input_ids.shape
        if doc_ids is not None:
            attn_mask = build_doc_mask(doc_ids)
            if positions is None:
                positions = positions_in_document(doc_ids)
        if positions is None:
            start = cache.length if cache is not None else 0
            if start + t > self.cfg.max_seq_len:
                raise ValueError(f"sequence of {start + t} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
            cos = self.rope_cos[start : start + t][None, None]
            sin = self.rope_sin[start : start + t][None, None]
        else:
            cos = self.rope_cos[positions][:, None]
            sin = self.rope_sin[positions][:, None]
        x = self.embed(input_ids)
        for block in self.layers:
            x = block(x, cos, sin, attn_mask, cache)
        h = self.norm(x)
        loss = None
        if targets is not None and self._fused_head(h):
            # Training step: the head's matmul, the loss and its gradient chunk by chunk (fused_ops).
            loss, logits = linear_cross_entropy(h.reshape(b * t, -1), self.lm_head.weight, targets.reshape(-1), ignore_index)
            logits = logits.view(b, t, -1)
        else:
            logits = self.lm_head(h)
        if targets is not None:
            if loss is None:
                loss = cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index)
            if self.training and self.cfg.moe is not None:
                aux, z = self.moe_aux_losses()
                loss = loss + self.cfg.moe.aux_loss_coef * aux + self.cfg.moe.z_loss_coef * z
        return logits, loss

    def _fused_head(self, h: torch.Tensor) -> bool:
        """Whether the fused head + loss applies: a backward will follow and everything is plain fp32.

        Tensor subclasses (e.g. DTensor slices of the head) go through the module and the plain loss.
        """
        w = self.lm_head.weight
        return (torch.is_grad_enabled() and (h.requires_grad or w.requires_grad)
                and h.dtype == w.dtype == torch.float32 and not torch.is_autocast_enabled(h.device.type)
                and type(self.lm_head) is nn.Linear and type(h) is torch.Tensor
                and type(w) in (torch.Tensor, nn.Parameter))

    def moe_aux_losses(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(load-balance loss, z-loss) of the last forward, each the mean over MoE layers.

        In training mode the returned loss is cross-entropy + aux_loss_coef * aux +
        z_loss_coef * z; in eval mode it is the cross-entropy alone.
        """
        layers = [b.mlp for b in self.layers if isinstance(b.mlp, MoE)]
        return torch.stack([m.aux_loss for m in layers]).mean(), torch.stack([m.z_loss for m in layers]).mean()

    # ---- accounting used by MFU, the planner and the console

    def num_params(self, exclude_input_embedding: bool = False) -> int:
        total = sum(p.numel() for p in self.parameters())
        if exclude_input_embedding and not self.cfg.tie_embeddings:
            total -= self.embed.weight.numel()
        return total


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts from the config alone (no allocation)."""
    d, f, v, L = cfg.d_model, cfg.ffn_dim, cfg.vocab_size or 0, cfg.n_layers
    attn = d * cfg.n_heads * cfg.head_dim * 2 + d * cfg.kv_heads * cfg.head_dim * 2
    mlp = 3 * d * f
    per_layer = attn + mlp + 2 * d
    embed = v * d
    head = 0 if cfg.tie_embeddings else v * d
    total = embed + L * per_layer + d + head
    counts = {"total": total, "embedding": embed, "non_embedding": total - embed, "per_layer": per_layer}
    if cfg.moe is not None:
        # MoE blocks: router + all experts + shared experts stored; router + k experts + shared ones active.
        n_moe, m, expert = len(cfg.moe_layers), cfg.moe, 3 * d * cfg.expert_dim
        router, shared = d * m.num_experts, m.num_shared_experts * expert
        stored = n_moe * (router + m.num_experts * expert + shared - mlp)
        idle = n_moe * (m.num_experts - m.top_k) * expert
        counts.update(total=total + stored, non_embedding=total + stored - embed, expert=expert,
                      moe_per_layer=attn + 2 * d + router + m.num_experts * expert + shared)
        counts["active"] = counts["total"] - idle
        counts["active_non_embedding"] = counts["active"] - embed
    else:
        counts.update(active=total, active_non_embedding=total - embed)
    return counts


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6*(params - input embedding) + 12*layers*d_model*seq_len.

    For MoE models the params are the *active* ones (router + top_k experts +
    shared experts per MoE block), since a token only runs through those. The
    6N term counts forward (2N) and backward (4N) matmuls; the output
    projection is included even when tied (it is a real matmul), the input
    embedding lookup is not. The attention term is the QK^T and AV products
    (Kaplan et al. 2020 / PaLM appendix B, non-causal count).
    """
    p = count_params(cfg)
    matmul_params = p["active"] - p["embedding"] + (cfg.vocab_size or 0) * cfg.d_model * (1 if cfg.tie_embeddings else 0)
    return 6.0 * matmul_params + 12.0 * cfg.n_layers * cfg.d_model * seq_len
