"""Training batches from token shards: a seeded, staged mixture over sources, packed into rows.

For every row the sampler picks a source with the current stage's weights; the
packer (train/packing.py) cuts the row from that source (concat) or fills it
with whole documents (best fit). All ranks draw the same global sequence of
rows and each keeps every ``world``-th one, so the loader's state (cursors,
epochs, sampler RNG, stage, packer buffers) is identical on every rank, fits in
a checkpoint, and stays valid when a run resumes on a different number of
processes with the same global batch.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pretrainlab.config import MixConfig, PackingConfig
from pretrainlab.errors import DataError
from pretrainlab.tokenizer.shards import ShardReader, list_sources
from pretrainlab.train.mixing import build_schedule, normalize, projected_epochs, stage_index
from pretrainlab.train.packing import BestFitPacker, doc_ids_from_eos, split_row


@dataclass
class Batch:
    inputs: torch.Tensor  # (micro_batch, seq_len) token ids
    targets: torch.Tensor  # (micro_batch, seq_len), -100 where ignored
    doc_ids: torch.Tensor | None  # (micro_batch, seq_len) document index per position, or None (plain causal)

    def to(self, device) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.inputs), move(self.targets), move(self.doc_ids))


class MixtureLoader:
    """Yields ``Batch`` micro-batches; ``state_dict``/``load_state_dict`` make it resumable."""

    def __init__(
        self,
        tokens_dir,
        seq_len: int,
        micro_batch: int,
        seed: int,
        mix: MixConfig | None = None,
        packing: PackingConfig | None = None,
        eos_id: int = 2,
        pad_id: int = 0,
        total_tokens: int | None = None,
        split: str = "train",
        rank: int = 0,
        world: int = 1,
        on_event: Callable[..., None] | None = None,
    ):
        mix = mix or MixConfig()
        self.packing = packing or PackingConfig()
        sources = list_sources(tokens_dir)
        if not sources:
            raise DataError(f"{tokens_dir}: no token shards found; run `pretrainlab data tokenize` first")
        self.readers = {s: ShardReader(tokens_dir, s, split) for s in sources}
        self.sources = sorted(self.readers)
        self.token_counts = {s: self.readers[s].num_tokens for s in self.sources}
        self.stages = build_schedule(mix, self.token_counts)
        for st in self.stages:
            empty = [s for s, w in st.weights.items() if w > 0 and self.token_counts[s] == 0]
            if empty:
                raise DataError(f"source(s) {empty} have no {split} tokens but a positive weight in stage '{st.name}'")
        self.max_epochs = mix.max_epochs
        self.seq_len, self.micro_batch = seq_len, micro_batch
        self.eos_id, self.pad_id = eos_id, pad_id
        self.rank, self.world = rank, world
        self.on_event = on_event or (lambda name, **kw: None)
        self.wait_s = 0.0  # seconds spent in next_batch (the data wait a rank's step sees)
        self.best_fit = BestFitPacker(seq_len + 1, self.packing.best_fit_buffer, eos_id, pad_id)
        self.rng = np.random.default_rng(seed)
        self.state = {
            "rows": 0,
            "stage": 0,
            "cursors": {s: 0 for s in self.sources},
            "epochs": {s: 0 for s in self.sources},
            "best_fit": {s: {"doc": 0, "epochs": 0, "buffer": []} for s in self.sources},
            "capped": [],
            "tokens_by_stage": {st.name: {s: 0 for s in self.sources} for st in self.stages},
            "pad_tokens": 0,
            "rng": self.rng.bit_generator.state,
        }
        if total_tokens and self.max_epochs:
            over = {s: e for s, e in projected_epochs(self.stages, self.token_counts, total_tokens).items()
                    if e > self.max_epochs}
            if over:
                text = ", ".join(f"{s} {e:.1f}" for s, e in sorted(over.items()))
                msg = (f"these sources would be repeated beyond mix.max_epochs={self.max_epochs} "
                       f"(projected epochs: {text}); they will leave the mixture when capped")
                warnings.warn(msg, stacklevel=2)
                self.on_event("mix_repetition_warning", projected=over, max_epochs=self.max_epochs)

    # ---- sampling

    @property
    def stage(self):
        return self.stages[self.state["stage"]]

    def current_weights(self) -> dict[str, float]:
        weights = {s: (0.0 if s in self.state["capped"] else w) for s, w in self.stage.weights.items()}
        if sum(weights.values()) <= 0:
            raise DataError(
                f"every source of stage '{self.stage.name}' reached mix.max_epochs={self.max_epochs}; "
                "raise the cap, add data, or shorten training"
            )
        return normalize(weights)

    def _update_stage(self) -> None:
        tokens = self.state["rows"] * self.seq_len
        idx = stage_index(self.stages, tokens)
        if idx != self.state["stage"]:
            old = self.stage.name
            self.state["stage"] = idx
            self.on_event("mix_stage", previous=old, stage=self.stage.name, tokens=tokens, weights=self.stage.weights)

    def _epochs(self, source: str) -> int:
        if self.packing.mode == "best_fit":
            return self.state["best_fit"][source]["epochs"]
        return self.state["epochs"][source]

    def _check_cap(self, source: str) -> None:
        if self.max_epochs and source not in self.state["capped"] and self._epochs(source) >= self.max_epochs:
            self.state["capped"].append(source)
            self.on_event("mix_source_capped", source=source, epochs=self._epochs(source))

    def _take(self, source: str, n: int) -> np.ndarray:
        """n tokens from the source's stream at its cursor, wrapping around (one more epoch) at its end."""
        reader = self.readers[source]
        total = reader.num_tokens
        start = cur = self.state["cursors"][source]
        parts, need = [], n
        while need > 0:
            chunk = reader.tokens(cur, min(total, cur + need))
            parts.append(np.asarray(chunk, dtype=np.int64))
            need -= len(chunk)
            cur = (cur + len(chunk)) % total
        # Rows overlap by one token: the last target of a row is the first input of the next.
        end = start + n - 1
        self.state["epochs"][source] += end // total
        self.state["cursors"][source] = end % total
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def next_row(self) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
        """One global row: (source, inputs, targets, doc ids)."""
        self._update_stage()
        weights = self.current_weights()
        probs = np.array([weights[s] for s in self.sources], dtype=np.float64)
        source = self.sources[int(self.rng.choice(len(self.sources), p=probs))]
        if self.packing.mode == "best_fit":
            row, pieces, pad = self.best_fit.pack(self.readers[source], self.state["best_fit"][source])
            x, y, doc = split_row(row, pieces, self.eos_id, pad)
            real = int((~pad[:-1]).sum())
            self.state["pad_tokens"] += self.seq_len - real
        else:
            row = self._take(source, self.seq_len + 1)
            x, y = row[:-1], row[1:]
            doc = doc_ids_from_eos(x, self.eos_id)
            real = self.seq_len
        self.state["rows"] += 1
        self.state["tokens_by_stage"][self.stage.name][source] += real
        self._check_cap(source)
        return source, x, y, doc

    def next_batch(self) -> Batch:
        t0 = time.perf_counter()
        xs, ys, docs = [], [], []
        # Every rank draws the same micro_batch*world global rows (keeping state identical) and keeps its share.
        for _ in range(self.micro_batch * self.world):
            global_index = self.state["rows"]
            _, x, y, doc = self.next_row()
            if global_index % self.world == self.rank:
                xs.append(x)
                ys.append(y)
                docs.append(doc)
        inputs = torch.from_numpy(np.stack(xs).astype(np.int64))
        targets = torch.from_numpy(np.stack(ys).astype(np.int64))
        doc_ids = torch.from_numpy(np.stack(docs)) if self.packing.doc_mask else None
        self.wait_s += time.perf_counter() - t0
        return Batch(inputs, targets, doc_ids)

    # ---- state and reporting

    def state_dict(self) -> dict:
        self.state["rng"] = self.rng.bit_generator.state
        return copy.deepcopy(self.state)

    def load_state_dict(self, d: dict) -> None:
        if sorted(d.get("cursors", {})) != self.sources:
            raise DataError(
                f"checkpoint loader state has sources {sorted(d.get('cursors', {}))} but the shards have "
                f"{self.sources}; resume with the same token shards or start a new run"
            )
        if set(d.get("tokens_by_stage", {})) != {st.name for st in self.stages}:
            raise DataError("checkpoint loader state has different mix stages; resume with the same mix config")
        self.state = copy.deepcopy(d)
        self.rng.bit_generator.state = self.state["rng"]

    def packing_efficiency(self) -> float:
        drawn = self.state["rows"] * self.seq_len
        return 1.0 - self.state["pad_tokens"] / drawn if drawn else 1.0

    def shares(self) -> dict[str, dict]:
        """Per stage: intended weights and realized token shares so far."""
        out = {}
        for st in self.stages:
            counts = self.state["tokens_by_stage"][st.name]
            total = sum(counts.values())
            out[st.name] = {
                "intended": dict(st.weights),
                "realized": {s: (n / total if total else 0.0) for s, n in counts.items()},
                "tokens": total,
            }
        return out

    def metrics(self) -> dict[str, float]:
        """Scalars for the metrics log: stage, realized share per source in this stage, packing efficiency."""
        share = self.shares()[self.stage.name]["realized"]
        out: dict[str, float] = {"mix/stage": float(self.state["stage"]), "packing/efficiency": self.packing_efficiency()}
        out.update({f"mix/share/{s}": v for s, v in share.items()})
        return out
