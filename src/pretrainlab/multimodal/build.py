"""`mm fit` and `mm build`: multimodal samples -> discretizers -> token shards in the text-shard format.

``mm build`` writes ``<out>/<source>/{train,heldout}.{bin,idx.npy,json}`` and
``<out>/manifest.json`` exactly like `data tokenize` (tokenizer_sha256 included),
so `train --set train.tokens=<out>` trains on it unchanged. One document is one
sample (or, with ``multimodal.max_doc_tokens``, a run of its consecutive groups cut
only between groups): its time-slice groups in time order, each group kept whole::

    <|timestamp_T|> text-ids
        <|image_start|> codes <|image_end|>
        <|video_start|> <|cam_front|> <|image_start|> codes <|image_end|> <|cam_front_left|> ... <|video_end|>
        <|audio_start|> codes <|audio_end|>
        <|action_start|> bins <|action_end|>
    <|timestamp_T+1|> ...  eos

T is the group's start relative to the sample's first timestamp, rounded to the
nearest timestamp token (tokenizer.timestamp_step_s). Beside each
part, ``<split>.action_pos.npy`` (int64 positions in the .bin) and
``<split>.action_values.npy`` (float32) keep the continuous action value behind
every action-bin token for regression. Invalid, unreadable or out-of-sync samples
go to ``<out>/quarantine.jsonl`` with a reason (and the measured drift).

Training rows: `packing.mode=best_fit` puts only whole documents of at most
``train.seq_len + 1`` tokens into a row, so with ``multimodal.max_doc_tokens`` at
most that, no row ever holds part of a time-slice group (concat packing cuts rows
anywhere, groups included).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from pretrainlab import __version__
from pretrainlab.errors import DataError
from pretrainlab.fsio import atomic_open, atomic_write_json, sha256_file
from pretrainlab.multimodal.config import MultimodalConfig
from pretrainlab.multimodal.discretize import (
    META_FILE, ActionBinner, AudioVQ, Discretizers, ImageVQ, as_image, kmeans, log_mel, subsample, to_patches,
)
from pretrainlab.multimodal.format import BadSample, Sample, read_samples, samples_path
from pretrainlab.multimodal.modality import MODALITIES, class_table
from pretrainlab.multimodal.sync import NS_PER_MS, check_sync
from pretrainlab.progress import console, progress_bar
from pretrainlab.tokenizer.shards import FORMAT as SHARD_FORMAT, MANIFEST_FILE, SPLITS, part_paths, token_dtype
from pretrainlab.tokenizer.spec import CAMERAS
from pretrainlab.tokenizer.vocab import load_tokenizer

SEGMENT_ORDER = {"text": 0, "image": 1, "video": 2, "audio": 3, "action": 4}


def mm_paths(cfg) -> dict[str, Path]:
    m: MultimodalConfig = cfg.multimodal
    return {
        "data": Path(m.data or cfg.workdir / "mm_data"),
        "out": Path(m.out or cfg.workdir / "mm_tokens"),
        "discretizers": Path(m.discretizers or cfg.workdir / "mm_discretizers"),
        "tokenizer": Path(cfg.tokenize_tokenizer_dir),
    }


def _tolerance_ns(m: MultimodalConfig) -> int:
    return int(round(m.sync_tolerance_ms * NS_PER_MS))


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def _valid_samples(data: Path, m: MultimodalConfig):
    for s in read_samples(data):
        if isinstance(s, Sample):
            s = check_sync(s, _tolerance_ns(m)) or s
        yield s


# --------------------------------------------------------------------------- fit


def fit_discretizers(cfg) -> Discretizers:
    """Fit the image/audio codebooks and action bins on the valid, in-sync samples; save them."""
    m: MultimodalConfig = cfg.multimodal
    p = mm_paths(cfg)
    spec = load_tokenizer(p["tokenizer"]).spec
    sizes = {k: len(spec.id_range(k)) for k in ("image", "audio", "action")}
    rng = np.random.default_rng(m.seed)
    patches, frames, actions, channels, n_samples = [], [], [], set(), 0
    n_lines = _count_lines(samples_path(p["data"]))
    with progress_bar("mm fit: read samples", n_lines, unit="samples") as bar:
        for s in _valid_samples(p["data"], m):
            bar.advance(1)
            if isinstance(s, BadSample):
                continue
            n_samples += 1
            for seg in s.segments:
                try:
                    if seg.modality in ("image", "video"):
                        img = as_image(seg.load(), m.patch_size)
                        channels.add(img.shape[2])
                        patches.append(to_patches(img, m.patch_size))
                    elif seg.modality == "audio":
                        frames.append(log_mel(seg.load(), m.sample_rate, m.n_fft, m.hop, m.n_mels))
                    elif seg.modality == "action":
                        actions.append(seg.action_values())
                except (ValueError, DataError):
                    continue  # `mm build` quarantines it with the reason
    if not n_samples:
        raise DataError(f"{p['data']}: no valid sample to fit discretizers on; see `pretrainlab mm build` quarantine reasons")
    need = {"image": bool(patches), "audio": bool(frames), "action": bool(actions)}
    for name, used in need.items():
        if used and not sizes[name]:
            key = {"image": "image_codes", "audio": "audio_codes", "action": "action_bins"}[name]
            raise DataError(f"the dataset has {name} segments but tokenizer {p['tokenizer']} reserves no {name} ids; "
                            f"re-run `pretrainlab tokenizer train --{key.replace('_', '-')} N`")
    image = audio = action = None
    info: dict = {"samples": n_samples, "seed": m.seed, "kmeans_iters": m.kmeans_iters, "code_version": __version__}
    t0 = time.perf_counter()
    if patches:
        if len(channels) > 1:
            raise DataError(f"{p['data']}: images have different channel counts {sorted(channels)}; use one")
        x = subsample(np.concatenate(patches), m.max_fit_vectors, rng)
        image = ImageVQ(kmeans(x, sizes["image"], m.kmeans_iters, m.seed), m.patch_size, channels.pop())
        info["image_vectors"] = int(x.shape[0])
    if frames:
        x = subsample(np.concatenate(frames), m.max_fit_vectors, rng)
        audio = AudioVQ(kmeans(x, sizes["audio"], m.kmeans_iters, m.seed + 1), m.sample_rate, m.n_fft, m.hop, m.n_mels)
        info["audio_vectors"] = int(x.shape[0])
    if actions:
        dims = {a.size for a in actions}
        if len(dims) > 1:
            raise DataError(f"{p['data']}: actions have different lengths {sorted(dims)}; use one")
        a = np.stack(actions)
        action = ActionBinner(a.min(0), a.max(0), sizes["action"])
        info["action_vectors"] = int(a.shape[0])
    info["seconds"] = round(time.perf_counter() - t0, 3)
    disc = Discretizers(image, audio, action)
    disc.save(p["discretizers"], info)
    console.print(f"mm fit: discretizers {disc.sha256[:12]} in {p['discretizers']} "
                  f"(image {sizes['image'] if image else 0}, audio {sizes['audio'] if audio else 0}, "
                  f"action bins {sizes['action'] if action else 0}; {n_samples} samples)")
    return disc


# --------------------------------------------------------------------------- tokens of one sample


def sample_tokens(sample: Sample, tok, disc: Discretizers) -> tuple[list[int], list[tuple[int, float]], int, list[int]]:
    """(ids without eos, [(position, continuous action value)], text chars, start of every group); ValueError(reason)."""
    spec = tok.spec
    ids: list[int] = []
    bounds: list[int] = []
    acts: list[tuple[int, float]] = []
    chars = 0
    start = min(s.t_ns for s in sample.segments)
    T = spec.token_id

    def need(d, name):
        if d is None:
            raise ValueError(f"the discretizers have no {name} codebook (fit them on data with {name} segments)")
        return d

    for g, segs in sample.groups.items():
        # Nearest timestamp token, not floor: sub-ms jitter must not move a group to the previous token.
        step = spec.timestamp_step_s
        t = round((min(s.t_ns for s in segs) - start) / 1e9 / step) * step
        bounds.append(len(ids))
        try:
            ids.append(spec.timestamp_id(t))
        except ValueError as exc:
            raise ValueError(f"group {g}: {exc}") from None
        segs = sorted(segs, key=lambda s: (SEGMENT_ORDER[s.modality], CAMERAS.index(s.camera) if s.camera else 0))
        cams = [s.camera for s in segs if s.modality == "video"]
        if len(set(cams)) != len(cams):
            raise ValueError(f"group {g} has two frames of one camera")
        video_open = False
        for seg in segs:
            if video_open and seg.modality != "video":
                ids.append(T("<|video_end|>"))
                video_open = False
            if seg.modality == "text":
                ids.extend(tok.encode(seg.text))
                chars += len(seg.text)
            elif seg.modality in ("image", "video"):
                codes = need(disc.image, "image").encode(seg.load())
                if seg.modality == "video":
                    if not video_open:
                        ids.append(T("<|video_start|>"))
                        video_open = True
                    ids.append(spec.camera_id(seg.camera))
                ids += [T("<|image_start|>"), *spec.code_to_id("image", codes).tolist(), T("<|image_end|>")]
            elif seg.modality == "audio":
                codes = need(disc.audio, "audio").encode(seg.load())
                ids += [T("<|audio_start|>"), *spec.code_to_id("audio", codes).tolist(), T("<|audio_end|>")]
            else:
                values = seg.action_values()
                bins = need(disc.action, "action").encode(values)
                ids.append(T("<|action_start|>"))
                acts += [(len(ids) + i, float(v)) for i, v in enumerate(values)]
                ids += spec.code_to_id("action", bins).tolist()
                ids.append(T("<|action_end|>"))
        if video_open:
            ids.append(T("<|video_end|>"))
    return ids, acts, chars, bounds


def doc_spans(n: int, bounds: list[int], limit: int) -> list[tuple[int, int]]:
    """Cut ``n`` ids into documents of at most ``limit`` tokens (eos included) at group starts only.

    ``limit`` 0: one document. ValueError when one group alone does not fit."""
    if not limit:
        return [(0, n)]
    ends = [*bounds[1:], n]
    spans, start = [], 0
    for b0, b1 in zip(bounds, ends):
        if b1 - b0 + 1 > limit:
            raise ValueError(f"a time-slice group of {b1 - b0} tokens does not fit multimodal.max_doc_tokens={limit} "
                             "(with eos); raise it")
        if b1 - start + 1 > limit:
            spans.append((start, b0))
            start = b0
    spans.append((start, n))
    return spans


def groups_of(doc, spec) -> list[list[int]]:
    """Split a document's ids at its timestamp tokens: one list per time-slice group (timestamp first)."""
    ts = spec.id_range("timestamp")
    groups: list[list[int]] = []
    for i in np.asarray(doc).tolist():
        if i in ts or not groups:
            groups.append([])
        groups[-1].append(i)
    return groups


def split_of(sample_id: str, heldout_fraction: float) -> str:
    h = int.from_bytes(hashlib.sha256(sample_id.encode("utf-8")).digest()[:8], "big") / 2**64
    return "heldout" if h < heldout_fraction else "train"


# --------------------------------------------------------------------------- build


class _Part:
    """One (source, split) part being written: .bin and .idx.npy through atomic files, action side arrays."""

    def __init__(self, out: Path, source: str, split: str, dtype: np.dtype):
        self.paths = part_paths(out, source, split)
        self.paths[0].parent.mkdir(parents=True, exist_ok=True)
        self.paths[2].unlink(missing_ok=True)  # invalid until the new record is written
        self.dtype = dtype
        self._bin = atomic_open(self.paths[0], "wb")
        self.fh = self._bin.__enter__()
        self.hash = hashlib.sha256()
        self.offsets, self.pos, self.vals, self.tokens, self.chars = [0], [], [], 0, 0

    def add(self, ids: list[int], acts, chars: int, eos: int) -> None:
        arr = np.asarray([*ids, eos], dtype=self.dtype)
        view = memoryview(arr).cast("B")
        self.fh.write(view)
        self.hash.update(view)
        self.pos += [self.tokens + p for p, _ in acts]
        self.vals += [v for _, v in acts]
        self.tokens += arr.size
        self.chars += chars
        self.offsets.append(self.tokens)

    def close(self, ok: bool) -> None:
        if not ok:
            self._bin.__exit__(RuntimeError, RuntimeError(), None)
            return
        self._bin.__exit__(None, None, None)
        base = self.paths[0].parent / self.paths[0].name.removesuffix(".bin")
        for path, arr in ((self.paths[1], np.asarray(self.offsets, np.int64)),
                          (Path(f"{base}.action_pos.npy"), np.asarray(self.pos, np.int64)),
                          (Path(f"{base}.action_values.npy"), np.asarray(self.vals, np.float32))):
            with atomic_open(path, "wb") as fh:
                np.save(fh, arr)


def build_shards(cfg) -> dict:
    """Dataset -> quarantine + token shards + manifest; fits the discretizers first if there are none."""
    t0 = time.perf_counter()
    m: MultimodalConfig = cfg.multimodal
    p = mm_paths(cfg)
    tok = load_tokenizer(p["tokenizer"])
    spec = tok.spec
    in_path = samples_path(p["data"])
    disc = Discretizers.load(p["discretizers"]) if (p["discretizers"] / META_FILE).is_file() else fit_discretizers(cfg)
    disc.check_spec(spec)
    out = p["out"]
    if out.resolve() == p["data"].resolve():
        raise DataError(f"multimodal.out ({out}) must differ from the dataset folder; choose another multimodal.out")
    dtype = token_dtype(tok.vocab_size)
    parts = {split: _Part(out, m.source, split, dtype) for split in SPLITS}
    quarantined: list[dict] = []
    counts = {"samples": 0, "groups": 0}
    table = class_table(spec)
    seg_counts = {k: 0 for k in SEGMENT_ORDER}  # governance: segments and tokens per modality
    tok_counts = np.zeros(len(MODALITIES), dtype=np.int64)
    ok = False
    try:
        n_lines = _count_lines(in_path)
        with progress_bar("mm build", n_lines, unit="samples") as bar:
            for s in _valid_samples(p["data"], m):
                bar.advance(1)
                if isinstance(s, BadSample):
                    quarantined.append(s.record("sync" if s.code in ("out_of_sync", "time_order") else "read"))
                    continue
                try:
                    ids, acts, chars, bounds = sample_tokens(s, tok, disc)
                    spans = doc_spans(len(ids), bounds, m.max_doc_tokens)
                except (ValueError, DataError) as exc:
                    quarantined.append(BadSample(s.id, s.line, "bad_payload", str(exc)).record("discretize"))
                    continue
                part = parts[split_of(s.id, m.heldout_fraction)]
                for a, b in spans:
                    part.add(ids[a:b], [(p - a, v) for p, v in acts if a <= p < b], chars if a == 0 else 0, tok.eos_id)
                counts["samples"] += 1
                counts["groups"] += len(s.groups)
                for seg in s.segments:
                    seg_counts[seg.modality] += 1
                tok_counts += np.bincount(table[np.asarray(ids, dtype=np.int64)], minlength=len(MODALITIES))
                tok_counts[MODALITIES.index("structure")] += len(spans)  # one eos per document
        if not parts["train"].tokens:
            raise DataError(f"{in_path}: no valid training sample ({len(quarantined)} quarantined, first: "
                            f"{quarantined[0]['reason'] if quarantined else 'none'})")
        ok = True
    finally:
        for part in parts.values():
            part.close(ok)
    input_sha = sha256_file(in_path)
    records = {}
    for split, part in parts.items():
        records[split] = rec = {
            "format": SHARD_FORMAT, "source": m.source, "split": split, "input": str(in_path), "input_sha256": input_sha,
            "tokenizer_sha256": tok.sha256, "dtype": dtype.name, "docs": len(part.offsets) - 1, "tokens": part.tokens,
            "chars": part.chars, "bin_sha256": part.hash.hexdigest(), "action_values": len(part.vals),
        }
        atomic_write_json(part.paths[2], rec)
    with atomic_open(out / "quarantine.jsonl", "w") as fh:
        for q in quarantined:
            fh.write(json.dumps(q, ensure_ascii=False) + "\n")
    keys = ("docs", "tokens", "chars", "bin_sha256", "input_sha256")
    totals = {split: {k: records[split][k] for k in ("docs", "tokens", "chars")} for split in SPLITS}
    totals["all"] = {k: sum(totals[sp][k] for sp in SPLITS) for k in ("docs", "tokens", "chars")}
    seconds = time.perf_counter() - t0
    manifest = {
        "format": SHARD_FORMAT, "tokenizer_sha256": tok.sha256, "tokenizer_dir": str(Path(tok.dir).resolve()), "tokenizer_kind": tok.kind,
        "vocab_size": tok.vocab_size, "text_vocab_size": tok.text_vocab_size, "eos_id": tok.eos_id, "bos_id": tok.bos_id,
        "pad_id": tok.pad_id, "dtype": dtype.name, "eos_appended": True,
        "sources": {m.source: {split: {k: records[split][k] for k in keys} for split in SPLITS}},
        "totals": totals, "corpus_dir": str(Path(p["data"]).resolve()), "corpus_manifest_sha256": input_sha,
        "multimodal": {
            "discretizers_dir": str(p["discretizers"]), "discretizers_sha256": disc.sha256,
            "sync_tolerance_ns": _tolerance_ns(m), "samples": counts["samples"], "groups": counts["groups"],
            "quarantined": len(quarantined), "config": m.model_dump(mode="json"),
            "segments_by_modality": seg_counts,
            "tokens_by_modality": dict(zip(MODALITIES, tok_counts.tolist())),
            "quarantined_by_reason": dict(Counter(f"{q['stage']}/{q['code']}" for q in quarantined)),
        },
        "seconds": round(seconds, 3), "code_version": __version__,
    }
    atomic_write_json(out / MANIFEST_FILE, manifest)
    console.print(f"mm build: {counts['samples']} samples ({counts['groups']} time-slice groups) -> "
                  f"{totals['all']['tokens']:,} tokens in {out}; {len(quarantined)} quarantined"
                  + (f" (see {out / 'quarantine.jsonl'})" if quarantined else ""))
    return manifest
