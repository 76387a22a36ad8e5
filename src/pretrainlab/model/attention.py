"""Document-masked causal attention: FlexAttention on GPUs, SDPA with an explicit mask elsewhere.

A packed row holds several documents; with ``doc_ids`` (batch, seq) a query
attends only to earlier keys of its own document. On CUDA builds with
FlexAttention the block-diagonal mask becomes a BlockMask, which skips fully
masked blocks (faster than dense SDPA on long rows); on the CPU FlexAttention
has no backward, so the same mask goes to ``scaled_dot_product_attention`` as
a boolean tensor.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

try:  # FlexAttention ships with torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:  # pragma: no cover - older torch
    BlockMask = None
    create_block_mask = flex_attention = None


def dense_doc_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(batch, 1, seq, seq) boolean mask: same document and not in the future."""
    t = doc_ids.shape[-1]
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    causal = torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()
    return (same & causal)[:, None]


def flex_available(device: torch.device) -> bool:
    return flex_attention is not None and device.type == "cuda"


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


def build_doc_mask(doc_ids: torch.Tensor):
    """The mask object the attention layers take: a BlockMask on CUDA, a dense bool tensor otherwise."""
    if flex_available(doc_ids.device):
        docs = doc_ids

        def mask_mod(b, h, q, kv):
            return (docs[b, q] == docs[b, kv]) & (q >= kv)

        b, t = doc_ids.shape
        return create_block_mask(mask_mod, b, None, t, t, device=doc_ids.device)
    return dense_doc_mask(doc_ids)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
    """q (b, h, t, d); k, v (b, h_kv, s, d) with h a multiple of h_kv; mask None (causal), bool tensor or BlockMask."""
    if BlockMask is not None and isinstance(mask, BlockMask):
        return _compiled_flex()(q, k, v, block_mask=mask, enable_gqa=k.shape[1] != q.shape[1])
    gqa = k.shape[1] != q.shape[1]  # SDPA shares each key/value head across its query group: no copies
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
