"""Continuous action values of the action-bin tokens in a training row (the action head's regression targets).

Continuous action values live beside the shards (``<split>.action_pos.npy``/``action_values.npy``,
positions in the flat ``.bin``). The loader hands rows of tokens, not offsets, so positions are mapped
here: every document that holds actions is indexed by a hash of its tokens (eos included) and, for each
whole document found in a row, the stored values go to the matching target positions. With
``packing.mode: best_fit`` every document is whole; ``concat`` cuts documents across rows (their action
values could not be matched), so the action term refuses it.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _key(tokens: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(tokens, dtype=np.int64).tobytes(), digest_size=16).digest()


def action_index(readers: dict) -> dict[bytes, tuple[np.ndarray, np.ndarray]]:
    """{hash of a document's tokens (eos included): (offsets of its action bins in the doc, their values)}."""
    out: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
    for reader in readers.values():
        pos_path = reader.bin_path.with_name(f"{reader.split}.action_pos.npy")
        val_path = reader.bin_path.with_name(f"{reader.split}.action_values.npy")
        if not pos_path.is_file() or not val_path.is_file():
            continue
        pos, vals = np.load(pos_path), np.load(val_path)
        index = np.asarray(reader.index)
        doc_of = np.searchsorted(index, pos, side="right") - 1
        for d in np.unique(doc_of):
            sel = doc_of == d
            start, end = int(index[d]), int(index[d + 1])
            out[_key(reader.tokens(start, end))] = (pos[sel] - start, vals[sel].astype(np.float32))
    return out


def action_targets(inputs: torch.Tensor, targets: torch.Tensor, eos_id: int,
                   index: dict[bytes, tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, values), both (B, T) aligned with ``targets``: the continuous value of each action-bin target."""
    B, T = targets.shape
    mask = np.zeros((B, T), dtype=bool)
    values = np.zeros((B, T), dtype=np.float32)
    x, y = inputs.cpu().numpy(), targets.cpu().numpy()
    for r in range(B):
        full = np.concatenate([x[r], y[r, -1:]])  # row tokens 0..T; target t is full[t + 1]
        ends = np.flatnonzero(full == eos_id)
        start = 0
        for e in ends:
            hit = index.get(_key(full[start:e + 1]))
            if hit is not None:
                t = start + hit[0] - 1
                ok = (t >= 0) & (t < T)
                mask[r, t[ok]] = True
                values[r, t[ok]] = hit[1][ok]
            start = int(e) + 1
    return torch.from_numpy(mask).to(targets.device), torch.from_numpy(values).to(targets.device)
