"""Language-aware text measurements shared by the quality filters, near-dedup and the report.

"Words" are whitespace-separated tokens, except that every CJK character is a
word of its own (Chinese has no spaces; one character is the closest unit the
Gopher rules' word counts can use without a segmenter).
"""

from __future__ import annotations

import re

CJK_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
CJK_CHAR = re.compile(f"[{CJK_RANGES}]")
WORDS = re.compile(f"[{CJK_RANGES}]|[^\\s{CJK_RANGES}]+")
_SPACE = re.compile(r"\s")
# Sentence/line-final punctuation, Western and CJK (full-width), optionally followed by closing quotes/brackets.
TERMINAL = ".!?\"'。！？…”’」』）)"


def cjk_ratio(text: str) -> float:
    """CJK characters / non-whitespace characters."""
    nonspace = len(text) - len(_SPACE.findall(text))
    if nonspace <= 0:
        return 0.0
    return len(CJK_CHAR.findall(text)) / nonspace


def is_cjk(text: str, threshold: float) -> bool:
    return cjk_ratio(text) >= threshold


def words(text: str) -> list[str]:
    return WORDS.findall(text)


def estimate_tokens(text: str) -> int:
    """Tokenizer-free size estimate used before a tokenizer exists: one per word, one per CJK character."""
    return len(WORDS.findall(text))
