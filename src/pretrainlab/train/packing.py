"""Packing documents into fixed-length rows, with the document ids a block-diagonal mask needs.

Two packers fill a row of ``seq_len + 1`` tokens (inputs are the first
``seq_len``, targets the last ``seq_len``):

- concat: rows are consecutive windows of a source's eos-separated stream;
  documents are split at row edges, nothing is padded.
- best fit: whole documents (split only when longer than a row) are placed
  largest-that-fits first from a small buffer of pending pieces; the rest of
  the row is padding whose targets are ignored.

Document ids are derived per row: a new document starts after every eos, so
the eos belongs to the document it ends. Targets that would cross from one
piece into an unrelated one (not after an eos) are ignored (-100).
"""

from __future__ import annotations

import numpy as np

IGNORE = -100


def doc_ids_from_eos(tokens: np.ndarray, eos_id: int) -> np.ndarray:
    """Per-position document index within a row: the count of eos tokens strictly before it."""
    is_eos = tokens == eos_id
    ids = np.cumsum(is_eos, axis=-1) - is_eos
    return ids.astype(np.int64)


def split_row(row: np.ndarray, piece_ids: np.ndarray, eos_id: int, pad_mask: np.ndarray | None = None):
    """Turn a packed row (length seq_len+1) into inputs, targets and document ids (length seq_len)."""
    x, y = row[:-1].astype(np.int64), row[1:].astype(np.int64).copy()
    doc = piece_ids[:-1].astype(np.int64)
    crosses = (piece_ids[1:] != piece_ids[:-1]) & (row[:-1] != eos_id)
    y[crosses] = IGNORE
    if pad_mask is not None:
        y[pad_mask[1:]] = IGNORE
    return x, y, doc


class BestFitPacker:
    """Fills rows with whole documents from one source, best fit first; state is plain lists."""

    def __init__(self, capacity: int, buffer_size: int, eos_id: int, pad_id: int):
        self.capacity, self.buffer_size = capacity, buffer_size
        self.eos_id, self.pad_id = eos_id, pad_id

    def _refill(self, reader, state: dict) -> None:
        """Top the pending buffer up from the source's document cursor (wrapping = one more epoch)."""
        buf = state["buffer"]
        while len(buf) < self.buffer_size:
            doc = state["doc"]
            start, end = int(reader.index[doc]), int(reader.index[doc + 1])  # includes the trailing eos
            for a in range(start, end, self.capacity):
                buf.append([a, min(end, a + self.capacity)])
            state["doc"] = doc + 1
            if state["doc"] >= reader.num_docs:
                state["doc"] = 0
                state["epochs"] += 1

    def pack(self, reader, state: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One row: (tokens, piece ids, pad mask), each of length ``capacity``."""
        row = np.full(self.capacity, self.pad_id, dtype=np.int64)
        pieces = np.full(self.capacity, -1, dtype=np.int64)
        fill, piece = 0, 0
        while True:
            self._refill(reader, state)
            room = self.capacity - fill
            buf = state["buffer"]
            # Largest pending piece that still fits; ties go to the oldest (stable, deterministic).
            best, best_len = -1, 0
            for i, (a, b) in enumerate(buf):
                n = b - a
                if best_len < n <= room:
                    best, best_len = i, n
            if best < 0:
                break
            a, b = buf.pop(best)
            row[fill : fill + best_len] = reader.tokens(a, b)
            pieces[fill : fill + best_len] = piece
            fill += best_len
            piece += 1
            if fill == self.capacity:
                break
        pad = np.zeros(self.capacity, dtype=bool)
        pad[fill:] = True
        pieces[fill:] = piece  # padding forms its own segment so it never attends to real tokens
        return row, pieces, pad
