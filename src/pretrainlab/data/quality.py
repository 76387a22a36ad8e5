"""Quality filters: Gopher quality and repetition rules, C4 line rules, FineWeb rules.

Each is a stage with its thresholds in ``data.quality``. All are Chinese-aware:
a document is CJK when ``quality.cjk_ratio`` of its non-space characters are
CJK; then every CJK character counts as a word, CJK stop words and full-width
punctuation are used, and length rules count characters. The repetition
statistics are computed on integer word ids with numpy, so each rule is one
pass over the document.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from pretrainlab.config import DataConfig
from pretrainlab.data.stages import Document, Reject, Stage, register_stage
from pretrainlab.data.textstats import CJK_CHAR, TERMINAL, alpha_token_count, cjk_ratio, token_arrays, words

EN_STOP_WORDS = re.compile(r"\b(?:the|be|to|of|and|that|have|with)\b", re.IGNORECASE)
ZH_STOP_WORDS = re.compile(r"[的了是在和有我不这也就都而及与着或]")
_BULLET_LINE = re.compile(r"^\s*[•\-*‣●○▪◦·–]", re.MULTILINE)
_ELLIPSIS_LINE = re.compile(r"(?:\.\.\.|…)\s*$", re.MULTILINE)
_PARAGRAPHS = re.compile(r"\n\s*\n")
# Full-width CJK stops end a sentence wherever they are (no space follows in Chinese); ASCII ones
# only before whitespace, a closing quote/bracket or the end (not in "3.14" or "e.g").
_SENTENCE_END = re.compile(r"[。！？]+|[.!?]+(?:\s|$|[”’」』）)\"'])")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated items beyond their first occurrence, characters in them)."""
    seen: set[str] = set()
    n = chars = 0
    for item in items:
        if item in seen:
            n += 1
            chars += len(item)
        else:
            seen.add(item)
    return n, chars


def ngram_repetition(ids: np.ndarray, lengths: np.ndarray, top_ns: list[int], dup_ns: list[int],
                     stop_below: float | None = None) -> tuple[dict[int, float], dict[int, float]]:
    """Gopher's n-gram repetition statistics over a token sequence (``ids``: 64-bit token hashes,
    ``lengths``: characters per token).

    top[n]: characters of the most frequent n-gram times its count / all characters (0 when nothing repeats);
    dup[n]: characters of the tokens covered by any n-gram that occurs more than once / all characters.
    One sort per n: equal neighbours in sorted order are the repeats. Coverage can only shrink as
    n grows (a repeated (n+1)-gram holds two repeated n-grams covering the same tokens), so once
    dup[n] <= ``stop_below`` the larger n get dup[n] as their (upper-bound) value without a sort.
    """
    top: dict[int, float] = {}
    dup: dict[int, float] = {}
    total = int(lengths.sum())
    if len(ids) == 0 or total == 0:
        return top, dup
    csum = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=csum[1:])
    h = ids.copy()
    with np.errstate(over="ignore"):
        for n in range(1, max([*top_ns, *dup_ns], default=1) + 1):
            if n > 1:
                h = h[:-1] * _HASH_MUL + ids[n - 1:]  # polynomial hash of the n-gram starting at each position
            if n not in top_ns and n not in dup_ns:
                continue
            if n not in top_ns and n in dup and stop_below is not None:
                continue  # bound already filled in below
            if len(h) < 2:  # fewer than two n-grams: nothing can repeat
                top[n] = dup[n] = 0.0
                continue
            order = np.argsort(h)
            sh = h[order]
            same = sh[1:] == sh[:-1]
            if not same.any():
                top[n] = dup[n] = 0.0
                continue
            if n in top_ns:
                bounds = np.flatnonzero(np.concatenate([[True], ~same, [True]]))
                runs = np.diff(bounds)
                best = int(np.argmax(runs))
                start = int(order[bounds[best]])
                top[n] = int(runs[best]) * int(csum[start + n] - csum[start]) / total
            if n in dup_ns:
                repeated = np.zeros(len(h), dtype=bool)
                repeated[order[1:][same]] = True
                repeated[order[:-1][same]] = True
                starts = np.flatnonzero(repeated)
                cover = np.zeros(len(ids) + 1, dtype=np.int64)
                np.add.at(cover, starts, 1)
                np.add.at(cover, starts + n, -1)
                covered = np.cumsum(cover[:-1]) > 0
                dup[n] = int(lengths[covered].sum()) / total
                if stop_below is not None and dup[n] <= stop_below:
                    for m in dup_ns:
                        if m > n:
                            dup.setdefault(m, dup[n])
    return top, dup


class _QualityStage(Stage):
    def _cjk(self, text: str) -> bool:
        return cjk_ratio(text) >= self.cfg.quality.cjk_ratio


@register_stage
class GopherQuality(_QualityStage):
    """Gopher quality rules (Rae et al. 2021): word count, mean word length, symbol ratio,
    bullet/ellipsis lines, share of words with letters, stop words."""

    name = "gopher_quality"

    def process(self, doc: Document) -> Document | Reject:
        q = self.cfg.quality
        text = doc.text
        _, starts, ends, ratio = token_arrays(text)
        cjk = ratio >= q.cjk_ratio
        n = len(starts)
        if n < q.min_words:
            return Reject("gopher_too_few_words", f"{n} words < quality.min_words={q.min_words}" + (" (CJK: characters)" if cjk else ""))
        if n > q.max_words:
            return Reject("gopher_too_many_words", f"{n} words > quality.max_words={q.max_words}")
        if not cjk:
            mean = float((ends - starts).mean())
            if not q.min_avg_word_len <= mean <= q.max_avg_word_len:
                return Reject("gopher_word_length", f"mean word length {mean:.1f} outside [{q.min_avg_word_len}, {q.max_avg_word_len}]")
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / n > q.max_symbol_word_ratio:
            return Reject("gopher_symbols", f"{symbols / n:.3f} '#'/ellipses per word > {q.max_symbol_word_ratio}")
        lines = text.count("\n") + 1
        bullets = len(_BULLET_LINE.findall(text))
        if bullets / lines > q.max_bullet_lines_ratio:
            return Reject("gopher_bullet_lines", f"{bullets}/{lines} lines start with a bullet > {q.max_bullet_lines_ratio}")
        ellipses = len(_ELLIPSIS_LINE.findall(text))
        if ellipses / lines > q.max_ellipsis_lines_ratio:
            return Reject("gopher_ellipsis_lines", f"{ellipses}/{lines} lines end with an ellipsis > {q.max_ellipsis_lines_ratio}")
        alpha = alpha_token_count(text, starts, ends) / n
        if alpha < q.min_alpha_words_ratio:
            return Reject("gopher_non_alpha_words", f"only {alpha:.2f} of words contain a letter < {q.min_alpha_words_ratio}")
        if q.min_stop_words:
            pattern = ZH_STOP_WORDS if cjk else EN_STOP_WORDS
            found = 0
            for _ in pattern.finditer(text):
                found += 1
                if found >= q.min_stop_words:
                    break
            else:
                return Reject("gopher_stop_words", f"{found} {'Chinese' if cjk else 'English'} stop words < quality.min_stop_words={q.min_stop_words}")
        return doc


@register_stage
class GopherRepetition(_QualityStage):
    """Gopher repetition rules: duplicated lines and paragraphs (by count and by characters),
    the most frequent 2-4-gram, characters covered by repeated 5-10-grams (CJK: character n-grams)."""

    name = "gopher_repetition"

    def process(self, doc: Document) -> Document | Reject:
        q = self.cfg.quality
        text = doc.text
        paragraphs = [p for p in _PARAGRAPHS.split(text) if p.strip()]
        n_dup, c_dup = _duplicates(paragraphs)
        if paragraphs and n_dup / len(paragraphs) > q.max_dup_para_ratio:
            return Reject("gopher_dup_paragraphs", f"{n_dup}/{len(paragraphs)} paragraphs repeated > {q.max_dup_para_ratio}")
        if c_dup / max(1, len(text)) > q.max_dup_para_char_ratio:
            return Reject("gopher_dup_paragraph_chars", f"{c_dup / len(text):.2f} of characters in repeated paragraphs > {q.max_dup_para_char_ratio}")
        lines = [ln for ln in text.split("\n") if ln.strip()]
        n_dup, c_dup = _duplicates(lines)
        if lines and n_dup / len(lines) > q.max_dup_line_ratio:
            return Reject("gopher_dup_lines", f"{n_dup}/{len(lines)} lines repeated > {q.max_dup_line_ratio}")
        if c_dup / max(1, len(text)) > q.max_dup_line_char_ratio:
            return Reject("gopher_dup_line_chars", f"{c_dup / len(text):.2f} of characters in repeated lines > {q.max_dup_line_char_ratio}")
        ids, starts, ends, ratio = token_arrays(text)
        scale = q.cjk_ngram_scale if ratio >= q.cjk_ratio else 1
        top_limits = {n * scale: v for n, v in q.max_top_ngram_ratio.items()}
        dup_limits = {n * scale: v for n, v in q.max_dup_ngram_ratio.items()}
        top, dup = ngram_repetition(ids, ends - starts, list(top_limits), list(dup_limits), min(dup_limits.values(), default=None))
        for n, limit in sorted(top_limits.items()):
            if top.get(n, 0.0) > limit:
                return Reject("gopher_top_ngram", f"most frequent {n}-gram covers {top[n]:.2f} of characters > {limit}")
        for n, limit in sorted(dup_limits.items()):
            if dup.get(n, 0.0) > limit:
                return Reject("gopher_dup_ngrams", f"repeated {n}-grams cover {dup[n]:.2f} of characters > {limit}")
        return doc


_TERMINAL = tuple(TERMINAL)


def _ends_with_terminal(line: str) -> bool:
    return line.rstrip().endswith(_TERMINAL)


@register_stage
class C4Lines(_QualityStage):
    """C4 rules (Raffel et al. 2020): drop lines without terminal punctuation (Western or CJK),
    with too few words, mentioning javascript or cookie/terms policies; remove documents with
    'lorem ipsum', with '{' (optional) or with too few sentences left."""

    name = "c4_lines"

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        self.changed = 0
        self.lines_removed: Counter = Counter()

    def process(self, doc: Document) -> Document | Reject:
        q = self.cfg.quality
        lower = doc.text.lower()
        if "lorem ipsum" in lower:
            return Reject("c4_lorem_ipsum", "contains 'lorem ipsum' (placeholder text)")
        if q.c4_drop_curly_brace and "{" in doc.text:
            return Reject("c4_curly_brace", "contains '{' (code or templates; quality.c4_drop_curly_brace)")
        kept: list[str] = []
        removed = Counter()
        # Document-level pre-checks skip the per-line phrase tests when the phrase is nowhere.
        check_js = "javascript" in lower
        check_policy = any(p in lower for p in _POLICY)
        min_words = q.c4_min_words_per_line
        for line in doc.text.split("\n"):
            stripped = line.strip()
            if not stripped:
                kept.append(line)
                continue
            if check_js or check_policy:
                low = stripped.lower()
                if check_js and "javascript" in low:
                    removed["javascript"] += 1
                    continue
                if check_policy and any(p in low for p in _POLICY):
                    removed["policy"] += 1
                    continue
            if not stripped.endswith(_TERMINAL):
                removed["no_terminal_punct"] += 1
            elif len(stripped.split()) < min_words and len(words(stripped)) < min_words:
                removed["too_few_words"] += 1
            else:
                kept.append(line)
        if removed:
            self.lines_removed.update(removed)
            text = "\n".join(kept).strip()
            if not text:
                return Reject("c4_no_lines_left", f"every line removed by C4 line rules ({dict(removed)})")
            doc.text = text
            self.changed += 1
        sentences = len(_SENTENCE_END.findall(doc.text))
        if sentences < q.c4_min_sentences:
            return Reject("c4_too_few_sentences", f"{sentences} sentences < quality.c4_min_sentences={q.c4_min_sentences}")
        return doc

    def finish(self) -> dict:
        return {"docs_changed": self.changed, "lines_removed": dict(self.lines_removed)}


@register_stage
class FineWebQuality(_QualityStage):
    """FineWeb rules (Penedo et al. 2024): share of lines ending in punctuation, share of short
    lines, characters in repeated lines, line breaks per word (list-like pages)."""

    name = "fineweb_quality"

    def process(self, doc: Document) -> Document | Reject:
        q = self.cfg.quality
        text = doc.text
        lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
        if not lines:
            return Reject("fineweb_empty", "no non-empty lines")
        cjk = self._cjk(text)
        punct = sum(map(_ends_with_terminal, lines)) / len(lines)
        if punct < q.min_punct_line_ratio:
            return Reject("fineweb_line_punct", f"{punct:.2f} of lines end in punctuation < {q.min_punct_line_ratio}")
        short_limit = 10 if cjk else 30
        short = sum(len(ln) <= short_limit for ln in lines) / len(lines)
        if short > q.max_short_line_ratio:
            return Reject("fineweb_short_lines", f"{short:.2f} of lines are <= {short_limit} chars > {q.max_short_line_ratio}")
        _, dup_chars = _duplicates(lines)
        ratio = dup_chars / max(1, len(text.replace("\n", "")))
        if ratio > q.max_dup_line_chars_ratio:
            return Reject("fineweb_dup_line_chars", f"{ratio:.3f} of characters in repeated lines > {q.max_dup_line_chars_ratio}")
        n_words = len(CJK_CHAR.findall(text)) // 2 if cjk else len(text.split())
        newline_ratio = text.count("\n") / max(1, n_words)
        if newline_ratio > q.max_newline_word_ratio:
            return Reject("fineweb_list_like", f"{newline_ratio:.2f} line breaks per word > {q.max_newline_word_ratio}")
        return doc
