"""Language-aware text measurements shared by the quality filters, near-dedup and the report.

"Words" are whitespace-separated tokens, except that every CJK character is a
word of its own (Chinese has no spaces; one character is the closest unit the
Gopher rules' word counts can use without a segmenter).
"""

from __future__ import annotations

import re

import numpy as np

CJK_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
CJK_CHAR = re.compile(f"[{CJK_RANGES}]")
WORDS = re.compile(f"[{CJK_RANGES}]|[^\\s{CJK_RANGES}]+")
# Sentence/line-final punctuation, Western and CJK (full-width), optionally followed by closing quotes/brackets.
TERMINAL = ".!?\"'。！？…”’」』）)"


def cjk_ratio(text: str) -> float:
    """CJK characters / non-whitespace characters."""
    if not text:
        return 0.0
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    nonspace = len(cp) - int(np.count_nonzero(_space_mask(cp)))
    if nonspace <= 0:
        return 0.0
    return int(np.count_nonzero(_cjk_mask(cp))) / nonspace


def is_cjk(text: str, threshold: float) -> bool:
    return cjk_ratio(text) >= threshold


def words(text: str) -> list[str]:
    return WORDS.findall(text)


def estimate_tokens(text: str) -> int:
    """Tokenizer-free size estimate used before a tokenizer exists: one per word, one per CJK character."""
    return len(WORDS.findall(text))


# --------------------------------------------------------------------------- numpy tokenization
# The same tokens as WORDS, found with array operations on the code points: several times
# faster than the regex on long documents, and it yields token hashes for n-gram statistics.

_MIX = np.uint64(0x9E3779B97F4A7C15)
_EMPTY_U64 = np.zeros(0, dtype=np.uint64)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)
_MIX_INV = np.uint64(pow(0x9E3779B97F4A7C15, -1, 2**64))
_CJK_BOUNDS = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x3040, 0x30FF), (0xAC00, 0xD7AF))
_SPACE_CODES = np.array([9, 10, 11, 12, 13, 28, 29, 30, 31, 32, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                         0x2028, 0x2029, 0x202F, 0x205F, 0x3000], dtype=np.uint32)
_SPACE_LUT = np.zeros(0x3001, dtype=bool)
_SPACE_LUT[_SPACE_CODES] = True


def _cjk_mask(cp: np.ndarray) -> np.ndarray:
    cjk = np.zeros(len(cp), dtype=bool)
    for lo, hi in _CJK_BOUNDS:
        cjk |= (cp >= lo) & (cp <= hi)
    return cjk


def _space_mask(cp: np.ndarray) -> np.ndarray:
    return _SPACE_LUT[np.minimum(cp, 0x3000)] & (cp <= 0x3000)


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


def token_arrays(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(64-bit hash, start, end of every token; CJK share of non-space characters), all in numpy.

    Tokens are those of :data:`pretrainlab.data.textstats.WORDS` (whitespace-separated,
    every CJK character alone). A token's hash is ``sum(cp[i] * MIX**(end-1-i))`` over its
    code points, computed for all tokens at once from prefix sums: MIX is odd, hence
    invertible mod 2**64, so ``MIX**-i`` weights make the segment sums position-free."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    if len(cp) == 0:
        return _EMPTY_U64, _EMPTY_I64, _EMPTY_I64, 0.0
    space = _space_mask(cp)
    cjk = _cjk_mask(cp)
    nonspace = int((~space).sum())
    ratio = float(cjk.sum()) / nonspace if nonspace else 0.0
    hashes, starts, ends = _tokens(cp, ~space, cjk)
    if len(starts) == 0:
        return _EMPTY_U64, _EMPTY_I64, _EMPTY_I64, ratio
    return hashes, starts, ends, ratio


def _tokens(cp: np.ndarray, word: np.ndarray, cjk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hash, start, end) of every token of the code points ``cp`` (masks: non-space, CJK)."""
    prev_word = np.concatenate([[False], word[:-1]])
    prev_cjk = np.concatenate([[False], cjk[:-1]])
    starts = np.nonzero(word & (~prev_word | cjk | prev_cjk))[0]
    next_word = np.concatenate([word[1:], [False]])
    next_cjk = np.concatenate([cjk[1:], [False]])
    ends = np.nonzero(word & (~next_word | cjk | next_cjk))[0] + 1
    pw, pinv = _powers(len(cp) + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(cp) + 1, dtype=np.uint64)
        np.cumsum(cp.astype(np.uint64) * pinv[: len(cp)], dtype=np.uint64, out=prefix[1:])
        hashes = (prefix[ends] - prefix[starts]) * pw[ends - 1]
    return hashes, starts, ends


def token_hashes_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`token_arrays` of many documents in one pass: (token hashes of all documents in
    order, each document's first-token offset into them (length n + 1), each document's CJK
    share). The texts are joined with a space, which ends every token, and the hashes do not
    depend on position, so every value equals the per-document one; the numpy calls are made
    once per batch instead of once per document (the cost for short documents)."""
    n = len(texts)
    if n == 0:
        return _EMPTY_U64, np.zeros(1, dtype=np.int64), np.zeros(0)
    cp = np.frombuffer(" ".join(texts).encode("utf-32-le"), dtype=np.uint32)
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=n)
    doc_start = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    space = _space_mask(cp)
    cjk = _cjk_mask(cp)
    word = ~space
    seg = np.minimum(doc_start, max(len(cp) - 1, 0))  # reduceat needs in-range starts; empty docs fixed below
    nonspace = np.add.reduceat(word.astype(np.int64), seg) if len(cp) else np.zeros(n, np.int64)
    cjk_count = np.add.reduceat(cjk.astype(np.int64), seg) if len(cp) else np.zeros(n, np.int64)
    empty = lengths == 0
    nonspace[empty], cjk_count[empty] = 0, 0
    ratios = np.where(nonspace > 0, cjk_count / np.maximum(nonspace, 1), 0.0)
    hashes, starts, _ = _tokens(cp, word, cjk)
    offsets = np.searchsorted(starts, np.append(doc_start, len(cp) + 1))
    return hashes, offsets.astype(np.int64), ratios


def alpha_token_count(text: str, starts: np.ndarray, ends: np.ndarray) -> int:
    """How many tokens contain a letter: ASCII letters, or any character from U+00C0 up that is
    not in the general/CJK punctuation, symbol or full-width-form blocks (a close, fast stand-in
    for ``str.isalpha`` on each character)."""
    if len(starts) == 0:
        return 0
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    alpha = ((cp | 0x20) >= 97) & ((cp | 0x20) <= 122)
    alpha |= (cp >= 0xC0) & ~((cp >= 0x2000) & (cp <= 0x2BFF)) & ~((cp >= 0x3000) & (cp <= 0x303F)) \
        & ~((cp >= 0xFF00) & (cp <= 0xFF20)) & (cp != 0xD7) & (cp != 0xF7)
    csum = np.zeros(len(cp) + 1, dtype=np.int64)
    np.cumsum(alpha, out=csum[1:])
    return int(np.count_nonzero(csum[ends] - csum[starts]))
