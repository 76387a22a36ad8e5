"""Exact and near dedup as executor tasks: signatures -> bucket shards -> clusters -> decisions.

The in-process build runs :class:`~pretrainlab.data.dedup.ExactDedup` and
:class:`~pretrainlab.data.dedup.NearDedup` on one stream, in read order. Here the same
decisions are computed by tasks whose memory is bounded by their shard:

1. **Signatures** (in each prefix task, :class:`SigWriter`): for every document that
   survives the stage prefix, the text as it would reach each dedup stage (the stateless
   stages between are run on a throw-away copy) gives a 16-byte digest (exact) and a MinHash
   signature plus its sorted unique shingles (near; the shingles go to a side file read back
   only for candidates).
2. **Exact round** (``exact`` tasks, one per digest bucket): the documents of one bucket,
   from every prefix task, grouped by digest; the first in read order survives.
3. **Near round**: ``near-buckets`` tasks (one per band-hash bucket) emit every pair of
   documents sharing a band; one ``near-cluster`` task joins the pairs into connected
   components (memory: the documents that have a candidate at all, like datatrove's
   ``MinhashDedupCluster``) and deals them to ``near-verify`` tasks, which replay the
   sequential rule inside each component: in read order, a document is a near-duplicate
   when its best match among the *kept* earlier members it shares a band with has Jaccard
   >= threshold -- exact Jaccard of the shingle sets (``near_dedup.verify: exact``) or the
   signature estimate. Components are independent, so this equals the one-stream result:
   precision and recall are the in-process stage's.

A round skips documents removed by an earlier round (stage order), and writes its
removals per (bucket, prefix task) as ``{read position: (code, reason)}``; the filter
tasks (:func:`pretrainlab.data.pipeline.filter_task`) look them up. Global read position =
documents of earlier prefix tasks + position inside the task.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
from collections import Counter
from pathlib import Path

import numpy as np

from pretrainlab.config import DataConfig
from pretrainlab.data.minhash import BatchMinHasher, exact_jaccard, unique_batch
from pretrainlab.data.stages import Document, Reject, Stage
from pretrainlab.errors import ConfigError
from pretrainlab.fsio import atomic_open, atomic_write_bytes

ROUNDS = ("exact_dedup", "near_dedup")
SIG_BATCH = 256  # documents hashed per numpy pass in a prefix task
_MIX = np.uint64(0x9E3779B97F4A7C15)


def dedup_rounds(stage_names: list[str], stateful: set[str]) -> list[str]:
    """The stateful stages in order; only the built-in dedup stages can run distributed."""
    rounds = [n for n in stage_names if n in stateful]
    unknown = [n for n in rounds if n not in ROUNDS]
    if unknown:
        raise ConfigError(f"data.stages: stateful stage(s) {', '.join(unknown)} cannot run on data.executor "
                          f"(only {', '.join(ROUNDS)} can); raise data.executor.min_input_mb to build in one process")
    return rounds


def hasher_for(cfg: DataConfig) -> BatchMinHasher:
    nd = cfg.near_dedup
    return BatchMinHasher(nd.bands * nd.rows, nd.seed, nd.ngram, nd.cjk_ngram, cfg.quality.cjk_ratio)


# --------------------------------------------------------------------------- 1. signatures (prefix tasks)


def shingle_path(work_dir: Path, rank: int) -> Path:
    return work_dir / "sigs" / f"{rank:05d}.shingles"


class SigWriter:
    """Collects one prefix task's dedup signatures; ``close()`` writes them (before the task's
    completion marker, so a finished task always has them)."""

    def __init__(self, work_dir: Path, rank: int, cfg: DataConfig, after: list[Stage], buckets: int) -> None:
        self.work_dir, self.rank, self.after, self.buckets = work_dir, rank, after, buckets
        self.bands, self.rows = cfg.near_dedup.bands, cfg.near_dedup.rows
        self.hasher = hasher_for(cfg) if any(s.name == "near_dedup" for s in after) else None
        self.n_docs = 0
        self.ids: dict[int, str] = {}
        self.exact_local: list[int] = []
        self.exact_digest: list[bytes] = []
        self.near_local: list[int] = []
        self.near_sig: list[np.ndarray] = []
        self.pending: list[str] = []  # texts of near_local's newest entries, hashed a batch at a time
        self.offsets = [0]
        shingle_path(work_dir, rank).parent.mkdir(parents=True, exist_ok=True)
        self._cm = atomic_open(shingle_path(work_dir, rank), "wb")
        self.shingles = self._cm.__enter__()

    def add(self, doc: Document | None, skip: frozenset) -> None:
        """The next document of the task (None: removed by the prefix)."""
        local = self.n_docs
        self.n_docs += 1
        if doc is None:
            return
        doc = Document(doc.id, doc.text, doc.source, dict(doc.meta))
        for stage in self.after:
            if stage.name in skip:
                continue
            if stage.name == "exact_dedup":
                self.exact_local.append(local)
                self.exact_digest.append(hashlib.blake2b(doc.text.encode("utf-8"), digest_size=16).digest())
                self.ids[local] = doc.id
            elif stage.name == "near_dedup":
                self.near_local.append(local)
                self.pending.append(doc.text)
                self.ids[local] = doc.id
                if len(self.pending) >= SIG_BATCH:
                    self._hash_pending()
            else:  # a stateless stage between: what it does to the text decides what the next round sees
                result = stage.process(doc)
                if isinstance(result, Reject):
                    return
                doc = result

    def _hash_pending(self) -> None:
        """Signatures of the pending texts; their sorted unique shingles go to the side file."""
        sh, off = self.hasher.shingles_batch(self.pending)
        self.near_sig.extend(self.hasher.signatures_batch(sh, off))
        uniq, uoff = unique_batch(sh, off)
        self.shingles.write(uniq.tobytes())
        self.offsets.extend((self.offsets[-1] + 4 * uoff[1:]).tolist())
        self.pending = []

    def close(self) -> None:
        """Write the task's record and its slices per bucket (a round task reads only its own)."""
        if self.pending:
            self._hash_pending()
        self._cm.__exit__(None, None, None)
        P = self.hasher.num_perm if self.hasher else 0
        near_local = np.asarray(self.near_local, dtype=np.int64)
        near_sig = np.stack(self.near_sig) if self.near_sig else np.zeros((0, P), dtype=np.uint32)
        local = np.asarray(self.exact_local, dtype=np.int64)
        digest = np.frombuffer(b"".join(self.exact_digest), dtype=np.uint64).reshape(-1, 2)
        owner = digest[:, 0] % np.uint64(self.buckets)
        exact = []
        for b in range(self.buckets):
            mine = owner == b
            exact.append({"local": local[mine], "digest": digest[mine], "ids": [self.ids[int(x)] for x in local[mine]]})
        write_segments(_slice_path(self.work_dir, "exact", self.rank), exact)
        h = _band_hashes(near_sig, self.bands, self.rows)
        owner = h % np.uint64(self.buckets)
        near = []
        for b in range(self.buckets):
            r, c = np.nonzero(owner == b)
            near.append({"local": near_local[r], "key": h[r, c] ^ (c.astype(np.uint64) << np.uint64(58))})
        write_segments(_slice_path(self.work_dir, "near", self.rank), near)
        ids = [self.ids[x].encode("utf-8") for x in self.near_local]
        arrays = {"local": near_local, "sig": near_sig, "shingle_offsets": np.asarray(self.offsets, dtype=np.int64),
                  "ids": np.frombuffer(b"".join(ids), dtype=np.uint8),
                  "id_offsets": np.concatenate([[0], np.cumsum([len(i) for i in ids], dtype=np.int64)])}
        for name, arr in arrays.items():
            with atomic_open(near_array_path(self.work_dir, self.rank, name), "wb") as fh:
                np.save(fh, arr)
        count_path(self.work_dir, self.rank).write_text(str(self.n_docs))  # last: read by doc_offsets


def near_array_path(work_dir: Path, rank: int, name: str) -> Path:
    return work_dir / "sigs" / f"{rank:05d}.near-{name}.npy"


class NearRecord:
    """One prefix task's near-dedup record, memory-mapped: a verify task reads only the rows of
    its own candidates, so its memory does not grow with the size of the prefix tasks."""

    def __init__(self, work_dir: Path, rank: int) -> None:
        self.arr = {n: np.load(near_array_path(work_dir, rank, n), mmap_mode="r")
                    for n in ("local", "sig", "shingle_offsets", "ids", "id_offsets")}

    def position(self, local: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.arr["local"], local)

    def doc_id(self, p: int) -> str:
        a, b = int(self.arr["id_offsets"][p]), int(self.arr["id_offsets"][p + 1])
        return bytes(self.arr["ids"][a:b]).decode("utf-8")


def count_path(work_dir: Path, rank: int) -> Path:
    return work_dir / "sigs" / f"{rank:05d}.count"


def write_segments(path: Path, segments: list) -> None:
    """One file of pickled segments and, at its end, their offsets: a reader of segment ``i``
    loads only that one (one file per writing task, not one per (task, bucket) pair)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        offsets = []
        for seg in segments:
            offsets.append(fh.tell())
            pickle.dump(seg, fh, protocol=pickle.HIGHEST_PROTOCOL)
        where = fh.tell()
        pickle.dump(offsets, fh, protocol=pickle.HIGHEST_PROTOCOL)
        fh.write(struct.pack("<q", where))


def read_segment(path: Path, index: int):
    with open(path, "rb") as fh:
        fh.seek(-8, os.SEEK_END)
        fh.seek(struct.unpack("<q", fh.read(8))[0])
        offsets = pickle.load(fh)
        fh.seek(offsets[index])
        return pickle.load(fh)


def _slice_path(work_dir: Path, kind: str, rank: int) -> Path:
    return work_dir / "sigs" / f"{rank:05d}.{kind}.seg"


def _load_slice(work_dir: Path, kind: str, bucket: int, rank: int) -> dict:
    return read_segment(_slice_path(work_dir, kind, rank), bucket)


def doc_offsets(work_dir: Path, ranks: int) -> np.ndarray:
    """Global read position of each prefix task's first document (length ranks + 1)."""
    counts = [int(count_path(work_dir, r).read_text()) for r in range(ranks)]
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


# --------------------------------------------------------------------------- removals, per (bucket, rank)


def _drops_path(work_dir: Path, round_name: str, bucket: int) -> Path:
    return work_dir / "rounds" / round_name / f"{bucket:05d}.seg"


def write_drops(work_dir: Path, round_name: str, bucket: int, drops: dict[int, tuple[str, str]],
                offsets: np.ndarray) -> None:
    """Removals of one bucket task, one segment per prefix task (rank) holding the documents."""
    by_rank: list[dict] = [{} for _ in range(len(offsets) - 1)]
    for seq, why in drops.items():
        by_rank[int(np.searchsorted(offsets, seq, side="right")) - 1][seq] = why
    write_segments(_drops_path(work_dir, round_name, bucket), by_rank)


def load_drops(work_dir: Path, round_name: str, buckets: int, rank: int) -> dict[int, tuple[str, str]]:
    out: dict[int, tuple[str, str]] = {}
    for b in range(buckets):
        out.update(read_segment(_drops_path(work_dir, round_name, b), rank))
    return out


def _alive(seq: np.ndarray, work_dir: Path, rounds: list[str], upto: str, buckets: int, rank: int) -> np.ndarray:
    """Mask of ``seq`` (documents of prefix task ``rank``) not removed by a round before ``upto``."""
    gone: set[int] = set()
    for name in rounds[: rounds.index(upto)]:
        gone.update(load_drops(work_dir, name, buckets, rank))
    if not gone:
        return np.ones(len(seq), dtype=bool)
    return ~np.isin(seq, np.fromiter(gone, dtype=np.int64, count=len(gone)))


def _write_stats(work_dir: Path, phase: str, bucket: int, stats: dict) -> None:
    path = work_dir / "rounds" / f"{phase}-stats" / f"{bucket:05d}.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, pickle.dumps(stats, protocol=pickle.HIGHEST_PROTOCOL))


def load_stats(work_dir: Path, phase: str, buckets: int) -> list[dict]:
    out = []
    for b in range(buckets):
        path = work_dir / "rounds" / f"{phase}-stats" / f"{b:05d}.pkl"
        if path.is_file():
            with open(path, "rb") as fh:
                out.append(pickle.load(fh))
    return out


# --------------------------------------------------------------------------- 2. exact round


def exact_task(work_dir: Path, bucket: int, ranks: int, buckets: int, rounds: list[str]) -> dict:
    """Group this bucket's digests; every later copy of a text is removed, naming the first."""
    offsets = doc_offsets(work_dir, ranks)
    seqs, digests, ids = [], [], {}
    for r in range(ranks):
        part = _load_slice(work_dir, "exact", bucket, r)
        seq = part["local"] + offsets[r]
        keep = _alive(seq, work_dir, rounds, "exact_dedup", buckets, r)
        seqs.append(seq[keep])
        digests.append(part["digest"][keep])
        ids.update({int(q): i for q, i, k in zip(seq.tolist(), part["ids"], keep.tolist()) if k})
    seq = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
    dig = np.concatenate(digests) if digests else np.zeros((0, 2), np.uint64)
    order = np.lexsort((seq, dig[:, 1], dig[:, 0]))
    seq, dig = seq[order], dig[order]
    drops: dict[int, tuple[str, str]] = {}
    first = 0
    for i in range(1, len(seq) + 1):
        if i == len(seq) or (dig[i] != dig[first]).any():
            for j in range(first + 1, i):
                drops[int(seq[j])] = ("duplicate", f"exact duplicate of {ids[int(seq[first])]}")
            first = i
    write_drops(work_dir, "exact_dedup", bucket, drops, offsets)
    return {"documents": len(seq), "removed": len(drops)}


# --------------------------------------------------------------------------- 3. near round


def _band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64 hash of each band's rows (the band index mixed in)."""
    x = sig[:, : bands * rows].reshape(len(sig), bands, rows).astype(np.uint64)
    h = np.zeros((len(sig), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(rows):
            h = (h + x[:, :, k] + np.uint64(1)) * _MIX
        h ^= np.arange(bands, dtype=np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        h = (h ^ (h >> np.uint64(31))) * _MIX
    return h


def near_bucket_task(work_dir: Path, bucket: int, ranks: int, buckets: int, rounds: list[str]) -> dict:
    """Every pair (earlier, later) of documents of this bucket that share a band value."""
    offsets = doc_offsets(work_dir, ranks)
    keys, seqs = [], []
    for r in range(ranks):
        part = _load_slice(work_dir, "near", bucket, r)
        seq = part["local"] + offsets[r]
        alive = _alive(seq, work_dir, rounds, "near_dedup", buckets, r)
        keys.append(part["key"][alive])
        seqs.append(seq[alive])
    key = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    seq = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
    order = np.lexsort((seq, key))
    key, seq = key[order], seq[order]
    pairs: list[np.ndarray] = []
    starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]])) if len(key) else np.zeros(0, np.int64)
    ends = np.append(starts[1:], len(key))
    for a, b in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
        group = seq[a:b]
        i, j = np.triu_indices(len(group), 1)
        pairs.append(np.stack([group[i], group[j]], axis=1))
    found = np.unique(np.concatenate(pairs), axis=0) if pairs else np.zeros((0, 2), np.int64)
    path = work_dir / "rounds" / "near-pairs" / f"{bucket:05d}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        np.save(fh, found.astype(np.int64))
    return {"documents": len(seq), "pairs": len(found)}


def _components(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, component label per node): min-label propagation with pointer jumping."""
    nodes = np.unique(pairs)
    a, b = np.searchsorted(nodes, pairs[:, 0]), np.searchsorted(nodes, pairs[:, 1])
    label = np.arange(len(nodes))
    while True:
        m = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        while True:  # pointer jumping: a label points at a node whose label may be smaller still
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            return nodes, label
        label = new


def near_cluster_task(work_dir: Path, rank: int, buckets: int, shards: int) -> dict:
    """Join all candidate pairs into components; write them dealt over ``shards`` verify tasks."""
    files = [work_dir / "rounds" / "near-pairs" / f"{b:05d}.npy" for b in range(buckets)]
    pairs = np.unique(np.concatenate([np.load(f) for f in files] or [np.zeros((0, 2), np.int64)]), axis=0)
    comps: list[list] = [[] for _ in range(shards)]
    if len(pairs):
        nodes, label = _components(pairs)
        pair_label = label[np.searchsorted(nodes, pairs[:, 0])]
        node_order, pair_order = np.argsort(label, kind="stable"), np.argsort(pair_label, kind="stable")
        lab_sorted, plab_sorted = label[node_order], pair_label[pair_order]
        for lab in np.unique(label):
            members = nodes[node_order[np.searchsorted(lab_sorted, lab):np.searchsorted(lab_sorted, lab, "right")]]
            edges = pairs[pair_order[np.searchsorted(plab_sorted, lab):np.searchsorted(plab_sorted, lab, "right")]]
            comps[int(members[0]) % shards].append((np.sort(members), edges))
    for c in range(shards):
        path = work_dir / "rounds" / "near-components" / f"{c:05d}.pkl"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, pickle.dumps(comps[c], protocol=pickle.HIGHEST_PROTOCOL))
    return {"pairs": len(pairs), "components": sum(map(len, comps))}


def _member_data(work_dir: Path, seqs: np.ndarray, offsets: np.ndarray, exact: bool) -> dict[int, tuple]:
    """seq -> (id, signature, sorted unique shingles or None) of the given documents, each prefix
    task's record opened once."""
    out: dict[int, tuple] = {}
    rank_of = np.searchsorted(offsets, seqs, side="right") - 1
    for r in np.unique(rank_of).tolist():
        rec = NearRecord(work_dir, r)
        want = np.sort(seqs[rank_of == r] - offsets[r])
        pos = rec.position(want)
        sigs = np.asarray(rec.arr["sig"][pos])
        fd = os.open(shingle_path(work_dir, r), os.O_RDONLY) if exact else None
        try:
            for i, (loc, p) in enumerate(zip(want.tolist(), pos.tolist())):
                sh = None
                if exact:
                    a, b = int(rec.arr["shingle_offsets"][p]), int(rec.arr["shingle_offsets"][p + 1])
                    sh = np.frombuffer(os.pread(fd, b - a, a), dtype=np.uint32)
                out[int(offsets[r] + loc)] = (rec.doc_id(p), sigs[i], sh)
        finally:
            if fd is not None:
                os.close(fd)
    return out


def near_verify_task(work_dir: Path, shard: int, ranks: int, cfg: DataConfig) -> dict:
    """The sequential rule inside each component of this shard (see the module docstring)."""
    with open(work_dir / "rounds" / "near-components" / f"{shard:05d}.pkl", "rb") as fh:
        comps = pickle.load(fh)
    offsets = doc_offsets(work_dir, ranks)
    exact, t = cfg.near_dedup.verify == "exact", cfg.near_dedup.threshold
    how = "Jaccard" if exact else "estimated Jaccard"
    drops: dict[int, tuple[str, str]] = {}
    dups: Counter = Counter()
    every = np.concatenate([m for m, _ in comps]) if comps else np.zeros(0, np.int64)
    data = _member_data(work_dir, every, offsets, exact)  # this shard's members only, each task's record read once
    for members, edges in comps:
        earlier: dict[int, list[int]] = {}
        for a, b in edges.tolist():
            earlier.setdefault(b, []).append(a)
        kept: set[int] = set()
        for m in members.tolist():
            best = None
            for k in earlier.get(m, ()):
                if k not in kept:
                    continue
                sim = exact_jaccard(data[m][2], data[k][2]) if exact else float(np.mean(data[k][1] == data[m][1]))
                if sim >= t and (best is None or (sim, -k) > (best[1], -best[0])):
                    best = (k, sim)
            if best is None:
                kept.add(m)
                continue
            rep = data[best[0]][0]
            dups[rep] += 1
            drops[m] = ("near_duplicate", f"near-duplicate of {rep} ({how} {best[1]:.2f}); cluster {rep}")
    write_drops(work_dir, "near_dedup", shard, drops, offsets)
    _write_stats(work_dir, "near", shard, {"duplicates_of": dict(dups)})
    return {"components": len(comps), "removed": len(drops)}


def near_extras(work_dir: Path, shards: int, docs_in: int, removed: int) -> dict:
    """NearDedup.finish() of the one-stream build, from the verify tasks' statistics."""
    dups: Counter = Counter()
    for s in load_stats(work_dir, "near", shards):
        dups.update(s["duplicates_of"])
    sizes = {rep: n + 1 for rep, n in dups.items()}
    biggest = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
    return {"kept_docs": docs_in - removed, "duplicate_docs": removed,
            "clusters_with_duplicates": len(sizes), "largest_clusters": dict(biggest)}


def exact_extras(docs_in: int, removed: int) -> dict:
    return {"unique_docs": docs_in - removed, "duplicate_docs": removed}


class Decided(Stage):
    """Stands in for a dedup stage in the filter tasks: removes what its round decided."""

    stateful = True

    def __init__(self, cfg: DataConfig, name: str, drops: dict[int, tuple[str, str]]) -> None:
        super().__init__(cfg)
        self.name = name  # type: ignore[misc]
        self.drops = drops

    def process(self, doc: Document) -> Document | Reject:
        why = self.drops.get(doc.seq)
        return doc if why is None else Reject(*why)
