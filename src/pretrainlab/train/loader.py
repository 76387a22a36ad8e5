"""Training batches from token shards: a seeded mixture over sources, rows cut from each stream.

Each row of ``seq_len + 1`` tokens comes from one source chosen by the sampler
(weights given, or proportional to tokens); rows are cut consecutively from that
source's train stream, wrapping around (one more epoch) at its end. Documents
are already separated by eos in the stream. All ranks draw the same global
sequence of rows and each keeps every ``world``-th one, so the loader's state
(cursors, epochs, sampler RNG) is identical everywhere and fits in a checkpoint.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from pretrainlab.errors import DataError
from pretrainlab.tokenizer.shards import ShardReader, list_sources


@dataclass
class LoaderState:
    cursors: dict[str, int]
    epochs: dict[str, int]
    rng: dict
    rows: int = 0
    tokens_by_source: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return copy.deepcopy(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> "LoaderState":
        return cls(**copy.deepcopy(d))


def mixture_weights(token_counts: dict[str, int], explicit: dict[str, float] | None) -> dict[str, float]:
    """Normalized sampling probabilities: explicit weights, else proportional to tokens."""
    if explicit:
        unknown = sorted(set(explicit) - set(token_counts))
        if unknown:
            raise DataError(
                f"train.source_weights names unknown source(s) {unknown}; available: {sorted(token_counts)}"
            )
        raw = {s: float(explicit.get(s, 0.0)) for s in token_counts}
    else:
        raw = {s: float(n) for s, n in token_counts.items()}
    if any(w < 0 for w in raw.values()):
        raise DataError("train.source_weights must be non-negative")
    total = sum(raw.values())
    if total <= 0:
        raise DataError("all source weights are zero; give at least one source a positive weight")
    return {s: w / total for s, w in raw.items()}


class MixtureLoader:
    """Yields (inputs, targets) micro-batches of shape (micro_batch, seq_len)."""

    def __init__(
        self,
        tokens_dir,
        seq_len: int,
        micro_batch: int,
        seed: int,
        weights: dict[str, float] | None = None,
        split: str = "train",
        rank: int = 0,
        world: int = 1,
    ):
        sources = list_sources(tokens_dir)
        if not sources:
            raise DataError(f"{tokens_dir}: no token shards found; run `pretrainlab data tokenize` first")
        self.readers = {s: ShardReader(tokens_dir, s, split) for s in sources}
        counts = {s: r.num_tokens for s, r in self.readers.items()}
        self.token_counts = counts
        self.weights = mixture_weights(counts, weights)
        empty = [s for s, w in self.weights.items() if w > 0 and counts[s] == 0]
        if empty:
            raise DataError(f"source(s) {empty} have no {split} tokens but a positive weight; set their weight to 0")
        self.sources = sorted(self.weights)
        self.probs = np.array([self.weights[s] for s in self.sources], dtype=np.float64)
        self.seq_len, self.micro_batch = seq_len, micro_batch
        self.rank, self.world = rank, world
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.state = LoaderState(
            cursors={s: 0 for s in self.sources},
            epochs={s: 0 for s in self.sources},
            rng=rng.bit_generator.state,
            tokens_by_source={s: 0 for s in self.sources},
        )

    def _take(self, source: str, n: int) -> np.ndarray:
        """n tokens from source's stream at its cursor, wrapping around at the end."""
        reader = self.readers[source]
        total = reader.num_tokens
        start = cur = self.state.cursors[source]
        parts, need = [], n
        while need > 0:
            chunk = reader.tokens(cur, min(total, cur + need))
            parts.append(np.asarray(chunk, dtype=np.int64))
            need -= len(chunk)
            cur = (cur + len(chunk)) % total
        # Rows overlap by one token: the last target of a row is the first input of the next.
        end = start + n - 1
        self.state.epochs[source] += end // total
        self.state.cursors[source] = end % total
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def next_row(self) -> tuple[str, np.ndarray]:
        idx = int(self.rng.choice(len(self.sources), p=self.probs))
        source = self.sources[idx]
        row = self._take(source, self.seq_len + 1)
        self.state.rows += 1
        self.state.tokens_by_source[source] += self.seq_len
        return source, row

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        while len(rows) < self.micro_batch:
            # Every rank draws every global row (keeping state identical) and keeps its share.
            global_index = self.state.rows
            _, row = self.next_row()
            if global_index % self.world == self.rank:
                rows.append(row)
        batch = torch.from_numpy(np.stack(rows))
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    def state_dict(self) -> dict:
        self.state.rng = self.rng.bit_generator.state
        return self.state.to_dict()

    def load_state_dict(self, d: dict) -> None:
        state = LoaderState.from_dict(d)
        if sorted(state.cursors) != self.sources:
            raise DataError(
                f"checkpoint loader state has sources {sorted(state.cursors)} but the shards have {self.sources}; "
                "resume with the same token shards or start a new run"
            )
        self.state = state
        self.rng.bit_generator.state = state.rng

    def realized_share(self) -> dict[str, float]:
        total = sum(self.state.tokens_by_source.values()) or 1
        return {s: n / total for s, n in self.state.tokens_by_source.items()}
