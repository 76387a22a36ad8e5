"""MinHash signatures and an LSH index, vectorized with numpy.

Shingles are word n-grams of the lower-cased text (``ngram``); for CJK
documents every CJK character is a token and ``cjk_ngram`` applies, i.e.
character n-grams. Each token is hashed from its code points with numpy (deterministic
across processes, unlike ``hash()``), n-grams are combined with a polynomial hash and
mixed down to 32 bits, and each of the ``num_perm`` hash functions is the affine
bijection ``(a*x + b) mod 2**32`` (random odd ``a``) of those well-mixed shingle
hashes: one broadcast uint32 multiply per document instead of a Python call per
shingle (datasketch's cost). Measured against exact Jaccard on 60 random pairs: RMS
error 0.035 with 120 functions, as the binomial sqrt(J(1-J)/120) predicts; 1.7x
faster than 64-bit multiply-shift hashing.

With b bands of r rows, a pair of Jaccard similarity s becomes a candidate with
probability ``1 - (1 - s**r)**b``; candidates are then verified on the full
signature (estimated Jaccard >= threshold) or, with ``exact=True``, on the exact
Jaccard of the two shingle sets read back from a spill file (precision 1 up to
32-bit hash collisions; recall is then the banding's candidate probability).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from pretrainlab.data.textstats import token_arrays, token_hashes_batch

_MIX = np.uint64(0x9E3779B97F4A7C15)
_CHUNK = 4096  # shingles per broadcast block: bounds memory on very long documents
def candidate_probability(s: float, bands: int, rows: int) -> float:
    return 1.0 - (1.0 - s**rows) ** bands


class MinHasher:
    def __init__(self, num_perm: int = 120, seed: int = 1, ngram: int = 5, cjk_ngram: int = 5, cjk_threshold: float = 0.3):
        rng = np.random.default_rng(seed)
        self.a = (rng.integers(0, 2**31, num_perm, dtype=np.uint32) << np.uint32(1)) | np.uint32(1)
        self.b = rng.integers(0, 2**32, num_perm, dtype=np.uint32)
        self.num_perm, self.ngram, self.cjk_ngram, self.cjk_threshold = num_perm, ngram, cjk_ngram, cjk_threshold

    def shingles(self, text: str) -> np.ndarray:
        """32-bit hashes of the document's n-gram shingles (uint64 array, possibly with repeats)."""
        ids, _, _, ratio = token_arrays(text.lower())
        if len(ids) == 0:
            return np.zeros(1, dtype=np.uint64)
        n = min(self.cjk_ngram if ratio >= self.cjk_threshold else self.ngram, len(ids))
        h = ids.copy()
        with np.errstate(over="ignore"):
            for k in range(1, n):
                h = h[:-1] * _MIX + ids[k:]
            return (h * _MIX) >> np.uint64(32)

    def signature(self, text: str) -> np.ndarray:
        return self.signature_of(self.shingles(text))

    def signature_of(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.uint32)
        sig = np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        buf = np.empty((self.num_perm, min(len(x), _CHUNK)), dtype=np.uint32)
        a, b = self.a[:, None], self.b[:, None]
        with np.errstate(over="ignore"):
            for i in range(0, len(x), _CHUNK):
                chunk = x[None, i:i + _CHUNK]
                out = buf[:, : chunk.shape[1]]
                np.multiply(a, chunk, out=out)
                np.add(out, b, out=out)
                np.minimum(sig, out.min(axis=1), out=sig)
        return sig


class BatchMinHasher(MinHasher):
    """:class:`MinHasher` over many documents at once -- the same shingles and signatures, bit
    for bit, with numpy called once per batch instead of once per document (the distributed
    dedup's signature pass: about 3x faster on 2 KB documents)."""

    def shingles_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(every document's ``shingles()`` concatenated, offsets of length n + 1)."""
        ids, tok_off, ratios = token_hashes_batch([t.lower() for t in texts])
        n_tok = np.diff(tok_off)
        want = np.where(ratios >= self.cjk_threshold, self.cjk_ngram, self.ngram)
        short = n_tok < want  # fewer tokens than the n-gram (or none): one shingle, as shingles() gives
        counts = np.where(short, 1, n_tok - want + 1)
        out_off = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        out = np.empty(int(out_off[-1]), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for n in np.unique(want[~short]).tolist():
                docs = np.flatnonzero(~short & (want == n))
                h = ids.copy()
                for k in range(1, n):
                    h = h[:-1] * _MIX + ids[k:]
                h = (h * _MIX) >> np.uint64(32)
                c = counts[docs]
                step = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
                out[np.repeat(out_off[docs], c) + step] = h[np.repeat(tok_off[docs], c) + step]
        for i in np.flatnonzero(short).tolist():
            out[out_off[i]] = self.shingles(texts[i])[0]
        return out, out_off

    def signatures_batch(self, shingles: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(n, num_perm) signatures: ``signature_of`` of each document's shingles."""
        x = shingles.astype(np.uint32)
        n = len(offsets) - 1
        sig = np.empty((n, self.num_perm), dtype=np.uint32)
        a, b = self.a[:, None], self.b[:, None]
        i = 0
        while i < n:
            # documents i..j-1 share one block of at most _CHUNK shingles (a longer document is alone)
            j = max(i + 1, int(np.searchsorted(offsets, offsets[i] + _CHUNK, side="right")) - 1)
            if j == i + 1 and offsets[j] - offsets[i] > _CHUNK:
                sig[i] = self.signature_of(shingles[offsets[i]:offsets[j]])
            else:
                block = x[None, offsets[i]:offsets[j]]
                with np.errstate(over="ignore"):
                    h = a * block + b
                sig[i:j] = np.minimum.reduceat(h, offsets[i:j] - offsets[i], axis=1).T
            i = j
        return sig


def unique_batch(shingles: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each document's sorted unique shingles as uint32 (``np.unique`` per document), concatenated,
    with their offsets."""
    doc = np.repeat(np.arange(len(offsets) - 1, dtype=np.uint64), np.diff(offsets))
    key = np.sort((doc << np.uint64(32)) | (shingles & np.uint64(0xFFFFFFFF)))
    key = key[np.concatenate([[True], key[1:] != key[:-1]])] if len(key) else key
    new_off = np.searchsorted(key >> np.uint64(32), np.arange(len(offsets), dtype=np.uint64))
    return (key & np.uint64(0xFFFFFFFF)).astype(np.uint32), new_off.astype(np.int64)


class ShingleStore:
    """Sorted unique shingle hashes of every inserted document, spilled to an unnamed temporary
    file (deleted on close): exact Jaccard verification of LSH candidates without holding the
    sets in memory (8 bytes of offset per document stay in RAM)."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile(prefix="pretrainlab-shingles-")
        self.offsets: list[int] = [0]

    def add(self, shingles: np.ndarray) -> None:
        data = np.unique(shingles).astype(np.uint32).tobytes()
        self.file.seek(self.offsets[-1])
        self.file.write(data)
        self.offsets.append(self.offsets[-1] + len(data))

    def get(self, idx: int) -> np.ndarray:
        self.file.flush()
        start, end = self.offsets[idx], self.offsets[idx + 1]
        return np.frombuffer(os.pread(self.file.fileno(), end - start, start), dtype=np.uint32)

    def close(self) -> None:
        self.file.close()


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted unique arrays."""
    inter = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - inter
    return inter / union if union else 1.0


class LSHIndex:
    """Bands of signature rows -> bucket -> indices of inserted signatures."""

    def __init__(self, bands: int, rows: int, exact: bool = False):
        self.bands, self.rows = bands, rows
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
        self.signatures: list[np.ndarray] = []
        self.keys: list[str] = []
        self.store = ShingleStore() if exact else None

    def _band_keys(self, sig: np.ndarray) -> list[bytes]:
        r = self.rows
        return [sig[i * r:(i + 1) * r].tobytes() for i in range(self.bands)]

    def matches(self, sig: np.ndarray, threshold: float, shingles: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Every inserted document sharing a band with ``sig`` whose Jaccard similarity is >= threshold:
        exact (from the shingle store) when the index keeps shingles, else estimated from the signatures."""
        seen: set[int] = set()
        out: list[tuple[int, float]] = []
        exact = self.store is not None and shingles is not None
        mine = None
        for band, key in zip(self.buckets, self._band_keys(sig)):
            for idx in band.get(key, ()):
                if idx in seen:
                    continue
                seen.add(idx)
                if exact:
                    if mine is None:
                        mine = np.unique(shingles).astype(np.uint32)
                    sim = exact_jaccard(mine, self.store.get(idx))
                else:
                    sim = float(np.mean(self.signatures[idx] == sig))
                if sim >= threshold:
                    out.append((idx, sim))
        return out

    def query(self, sig: np.ndarray, threshold: float, shingles: np.ndarray | None = None) -> tuple[int, float] | None:
        """The best match (highest similarity, then earliest), as (index, similarity)."""
        found = self.matches(sig, threshold, shingles)
        return max(found, key=lambda m: (m[1], -m[0])) if found else None

    def insert(self, sig: np.ndarray, key: str, shingles: np.ndarray | None = None) -> int:
        idx = len(self.signatures)
        self.signatures.append(sig)
        self.keys.append(key)
        if self.store is not None:
            if shingles is None:
                raise ValueError("an exact LSHIndex needs the document's shingles")
            self.store.add(shingles)
        for band, k in zip(self.buckets, self._band_keys(sig)):
            band.setdefault(k, []).append(idx)
        return idx
