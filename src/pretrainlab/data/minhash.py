"""MinHash signatures and an LSH index, vectorized with numpy.

Shingles are word n-grams of the lower-cased text (``ngram``); for CJK
documents every CJK character is a token and ``cjk_ngram`` applies, i.e.
character n-grams. Each token is hashed with CRC-32 (deterministic across
processes, unlike ``hash()``), n-grams are combined with a polynomial hash, and
each of the ``num_perm`` hash functions is multiply-shift hashing
``(a*x + b) mod 2**64 >> 32`` with random odd ``a``: one broadcasted numpy
multiply per document instead of a Python call per shingle (datasketch's cost).

With b bands of r rows, a pair of Jaccard similarity s becomes a candidate with
probability ``1 - (1 - s**r)**b``; candidates are then verified on the full
signature (estimated Jaccard >= threshold), which keeps precision high.
"""

from __future__ import annotations

import numpy as np

_MIX = np.uint64(0x9E3779B97F4A7C15)
_MIX_INV = np.uint64(pow(0x9E3779B97F4A7C15, -1, 2**64))
_CHUNK = 4096  # shingles per broadcast block: bounds memory on very long documents
_CJK_BOUNDS = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x3040, 0x30FF), (0xAC00, 0xD7AF))
_SPACE_CODES = np.array([9, 10, 11, 12, 13, 28, 29, 30, 31, 32, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                         0x2028, 0x2029, 0x202F, 0x205F, 0x3000], dtype=np.uint32)
_POW_CACHE: list[np.ndarray] = [np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64)]


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """MIX**i and MIX**-i (mod 2**64) for i < n, grown on demand."""
    if len(_POW_CACHE[0]) < n:
        size = max(n, 2 * len(_POW_CACHE[0]))
        with np.errstate(over="ignore"):
            for i, base in enumerate((_MIX, _MIX_INV)):
                steps = np.full(size, base, dtype=np.uint64)
                steps[0] = 1
                _POW_CACHE[i] = np.cumprod(steps, dtype=np.uint64)
    return _POW_CACHE[0][:n], _POW_CACHE[1][:n]


def token_hashes(text: str) -> tuple[np.ndarray, float]:
    """(64-bit hash of every token, CJK share of non-space characters), all in numpy.

    Tokens are those of :data:`pretrainlab.data.textstats.WORDS` (whitespace-separated,
    every CJK character alone). A token's hash is ``sum(cp[i] * MIX**(end-1-i))`` over its
    code points, computed for all tokens at once from prefix sums: MIX is odd, hence
    invertible mod 2**64, so ``MIX**-i`` weights make the segment sums position-free."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    if len(cp) == 0:
        return np.zeros(0, dtype=np.uint64), 0.0
    space = np.isin(cp, _SPACE_CODES)
    cjk = np.zeros(len(cp), dtype=bool)
    for lo, hi in _CJK_BOUNDS:
        cjk |= (cp >= lo) & (cp <= hi)
    nonspace = int((~space).sum())
    ratio = float(cjk.sum()) / nonspace if nonspace else 0.0
    word = ~space
    prev_word = np.concatenate([[False], word[:-1]])
    prev_cjk = np.concatenate([[False], cjk[:-1]])
    starts = np.nonzero(word & (~prev_word | cjk | prev_cjk))[0]
    if len(starts) == 0:
        return np.zeros(0, dtype=np.uint64), ratio
    next_word = np.concatenate([word[1:], [False]])
    next_cjk = np.concatenate([cjk[1:], [False]])
    ends = np.nonzero(word & (~next_word | cjk | next_cjk))[0] + 1
    pw, pinv = _powers(len(cp) + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(cp) + 1, dtype=np.uint64)
        np.cumsum(cp.astype(np.uint64) * pinv[: len(cp)], dtype=np.uint64, out=prefix[1:])
        hashes = (prefix[ends] - prefix[starts]) * pw[ends - 1]
    return hashes, ratio


def candidate_probability(s: float, bands: int, rows: int) -> float:
    return 1.0 - (1.0 - s**rows) ** bands


class MinHasher:
    def __init__(self, num_perm: int = 120, seed: int = 1, ngram: int = 5, cjk_ngram: int = 5, cjk_threshold: float = 0.3):
        rng = np.random.default_rng(seed)
        self.a = (rng.integers(0, 2**63, num_perm, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
        self.b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
        self.num_perm, self.ngram, self.cjk_ngram, self.cjk_threshold = num_perm, ngram, cjk_ngram, cjk_threshold

    def shingles(self, text: str) -> np.ndarray:
        """32-bit hashes of the document's n-gram shingles (uint64 array, possibly with repeats)."""
        ids, ratio = token_hashes(text.lower())
        if len(ids) == 0:
            return np.zeros(1, dtype=np.uint64)
        n = min(self.cjk_ngram if ratio >= self.cjk_threshold else self.ngram, len(ids))
        h = ids.copy()
        with np.errstate(over="ignore"):
            for k in range(1, n):
                h = h[:-1] * _MIX + ids[k:]
            return (h * _MIX) >> np.uint64(32)

    def signature(self, text: str) -> np.ndarray:
        x = self.shingles(text)
        sig = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        buf = np.empty((self.num_perm, min(len(x), _CHUNK)), dtype=np.uint64)
        a, b = self.a[:, None], self.b[:, None]
        with np.errstate(over="ignore"):
            for i in range(0, len(x), _CHUNK):
                chunk = x[None, i:i + _CHUNK]
                out = buf[:, : chunk.shape[1]]
                np.multiply(a, chunk, out=out)
                np.add(out, b, out=out)
                np.minimum(sig, out.min(axis=1), out=sig)
        # The shift is monotonic, so min-then-shift equals shift-then-min (one pass fewer).
        return (sig >> np.uint64(32)).astype(np.uint32)


class LSHIndex:
    """Bands of signature rows -> bucket -> indices of inserted signatures."""

    def __init__(self, bands: int, rows: int):
        self.bands, self.rows = bands, rows
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
        self.signatures: list[np.ndarray] = []
        self.keys: list[str] = []

    def _band_keys(self, sig: np.ndarray) -> list[bytes]:
        r = self.rows
        return [sig[i * r:(i + 1) * r].tobytes() for i in range(self.bands)]

    def query(self, sig: np.ndarray, threshold: float) -> tuple[int, float] | None:
        """The best inserted signature with estimated Jaccard >= threshold, as (index, estimate)."""
        seen: set[int] = set()
        best: tuple[int, float] | None = None
        for band, key in zip(self.buckets, self._band_keys(sig)):
            for idx in band.get(key, ()):
                if idx in seen:
                    continue
                seen.add(idx)
                est = float(np.mean(self.signatures[idx] == sig))
                if est >= threshold and (best is None or est > best[1]):
                    best = (idx, est)
        return best

    def insert(self, sig: np.ndarray, key: str) -> int:
        idx = len(self.signatures)
        self.signatures.append(sig)
        self.keys.append(key)
        for band, k in zip(self.buckets, self._band_keys(sig)):
            band.setdefault(k, []).append(idx)
        return idx
