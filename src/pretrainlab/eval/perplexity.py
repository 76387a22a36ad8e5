"""Held-out loss and perplexity, per source and overall.

The held-out stream of a source is scored from its start in consecutive windows:
window ``w`` reads tokens ``[w*L, w*L + L + 1)`` (``L = seq_len``), feeds the
first ``L`` and predicts the next ``L``. Windows share one boundary token, so
every token after the first is scored exactly once and no target is scored
twice. The last window may be shorter (a short or capped stream is scored as
far as it goes). Attention is plain causal across document boundaries (the eos
between documents is a scored target). Everything is deterministic, runs under
``torch.no_grad`` and restores the model's train/eval mode, so the trainer can
call it for periodic validation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pretrainlab.tokenizer.shards import ShardReader, list_sources

OVERALL = "overall"


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def _skipped(reason: str) -> dict[str, Any]:
    return {"loss": None, "ppl": None, "tokens": 0, "skipped": reason}


def _model_device(model: torch.nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def _score(model, windows: list[np.ndarray], device: torch.device) -> float:
    """Summed NLL over equal-length windows (each of length t+1) in one forward pass."""
    batch = torch.from_numpy(np.stack(windows).astype(np.int64)).to(device)
    logits, _ = model(batch[:, :-1])
    nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum")
    return float(nll.double().item())


def heldout_loss(model, reader, seq_len: int, max_tokens: int, batch_size: int, device=None) -> dict[str, Any]:
    """Mean token NLL of ``model`` on the start of ``reader``'s stream.

    Scores ``min(max_tokens, reader.num_tokens - 1)`` target tokens. Returns
    ``{"loss", "ppl", "tokens"}``; a stream with fewer than two tokens returns
    ``loss=None, ppl=None, tokens=0`` and a ``"skipped"`` reason instead.
    ``seq_len`` is capped at the model's ``max_seq_len``.
    """
    max_len = getattr(getattr(model, "cfg", None), "max_seq_len", None)
    seq_len = max(1, min(int(seq_len), int(max_len)) if max_len else int(seq_len))
    batch_size = max(1, int(batch_size))
    n_targets = min(int(max_tokens), int(reader.num_tokens) - 1)
    if n_targets <= 0:
        return _skipped(f"held-out stream has {int(reader.num_tokens)} tokens; need at least 2")
    dev = _model_device(model, device)
    was_training = model.training
    model.eval()
    total_nll, scored = 0.0, 0
    try:
        n_full = n_targets // seq_len
        for b0 in range(0, n_full, batch_size):
            idx = range(b0, min(b0 + batch_size, n_full))
            windows = [np.asarray(reader.tokens(w * seq_len, w * seq_len + seq_len + 1)) for w in idx]
            total_nll += _score(model, windows, dev)
            scored += seq_len * len(windows)
        rest = n_targets - n_full * seq_len
        if rest > 0:
            start = n_full * seq_len
            total_nll += _score(model, [np.asarray(reader.tokens(start, start + rest + 1))], dev)
            scored += rest
    finally:
        model.train(was_training)
    loss = total_nll / scored
    return {"loss": loss, "ppl": _ppl(loss), "tokens": scored}


def perplexity_per_source(
    model,
    tokens_dir: str | Path,
    seq_len: int,
    max_tokens_per_source: int,
    batch_size: int,
    device=None,
    sources: list[str] | None = None,
    split: str = "heldout",
) -> dict[str, dict[str, Any]]:
    """``heldout_loss`` for every source under ``tokens_dir`` plus an ``"overall"`` entry.

    ``overall`` is the token-weighted mean over the sources that were scored.
    A source whose split is missing, unreadable or too short is reported with
    ``tokens=0`` and a ``"skipped"`` reason; this function does not raise for it.
    """
    if sources is None:
        sources = list(list_sources(tokens_dir))
    results: dict[str, dict[str, Any]] = {}
    for source in sources:
        try:
            reader = ShardReader(tokens_dir, source, split)
        except Exception as exc:  # a missing/corrupt split must not abort a validation pass
            results[source] = _skipped(f"cannot read {split} split: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            continue
        results[source] = heldout_loss(model, reader, seq_len, max_tokens_per_source, batch_size, device)
    scored = [r for r in results.values() if r["tokens"] > 0]
    total = sum(r["tokens"] for r in scored)
    if total:
        loss = sum(r["loss"] * r["tokens"] for r in scored) / total
        results[OVERALL] = {"loss": loss, "ppl": _ppl(loss), "tokens": total}
    else:
        results[OVERALL] = _skipped("no source had held-out tokens")
    return results
