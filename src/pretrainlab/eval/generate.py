"""Autoregressive generation with the model's KV cache: greedy, temperature, top-k, top-p."""

from __future__ import annotations

import torch

from pretrainlab.model.transformer import KVCache


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k and the top-p nucleus to -inf (last dimension).

    top_k <= 0 disables top-k (ties with the k-th value are kept). top_p >= 1
    disables nucleus filtering; otherwise the smallest set of most probable
    tokens whose probability mass reaches ``top_p`` is kept (at least one token).
    Top-k is applied first, then top-p on what remains.
    """
    out = logits.clone()
    if top_k and top_k > 0 and top_k < out.size(-1):
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits.float(), dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def _pick(logits: torch.Tensor, greedy: bool, temperature: float, top_k: int, top_p: float, generator) -> int:
    if greedy or temperature <= 0:
        return int(torch.argmax(logits).item())
    scaled = filter_logits(logits.float().cpu() / temperature, top_k, top_p)
    probs = torch.softmax(scaled, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


@torch.no_grad()
def generate(
    model,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Continue ``prompt_ids``; returns the new tokens only (without the eos that stopped it).

    Prefills the prompt into a KVCache, then decodes one token per forward.
    Stops after ``max_new_tokens``, at ``eos_id``, or when the next token would
    not fit in ``model.cfg.max_seq_len`` (a longer prompt keeps its last
    ``max_seq_len`` tokens). Sampling draws on the CPU from ``generator`` (a CPU
    ``torch.Generator``), so a seeded generator reproduces on any device.
    """
    if not prompt_ids:
        raise ValueError("generate needs a non-empty prompt (e.g. [tokenizer.bos_id])")
    max_len = int(model.cfg.max_seq_len)
    prompt = [int(t) for t in prompt_ids][-max_len:]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[int] = []
    try:
        cache = KVCache.empty(len(model.layers))
        logits, _ = model(torch.tensor([prompt], dtype=torch.long, device=device), cache=cache)
        for _ in range(max(0, int(max_new_tokens))):
            tok = _pick(logits[0, -1], greedy, temperature, top_k, top_p, generator)
            if eos_id is not None and tok == eos_id:
                break
            out.append(tok)
            if len(out) == max_new_tokens or cache.length + 1 > max_len:
                break
            logits, _ = model(torch.tensor([[tok]], dtype=torch.long, device=device), cache=cache)
    finally:
        model.train(was_training)
    return out
