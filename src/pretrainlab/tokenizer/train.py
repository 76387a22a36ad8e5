"""`tokenizer train`: a byte-level BPE tokenizer trained on the clean corpus.

Byte-level means every byte maps to one of 256 base symbols, so any text (code,
Chinese, emoji, stray control characters) encodes without an unknown token and
decodes back exactly. Training reads at most ``tokenizer.sample_chars``
characters of the *train* split, spread over sources in proportion to their
size and over each source's documents evenly (a deterministic stride, no RNG),
so the same corpus and config always give a byte-identical ``tokenizer.json``.

Outputs in ``cfg.tokenizer_dir``:

* ``tokenizer.json``: a Hugging Face `tokenizers` file (loadable by
  ``tokenizers.Tokenizer.from_file`` and ``transformers.PreTrainedTokenizerFast``).
  Special tokens have fixed ids: ``<|pad|>``=0, ``<|bos|>``=1, ``<|eos|>``=2.
* ``manifest.json``: tokenizer sha256 ("tokenizer hash"), vocabulary size,
  special token ids, corpus manifest sha256, characters per source, config,
  seconds, code version.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from pretrainlab import __version__
from pretrainlab.config import ProjectConfig, config_to_dict
from pretrainlab.errors import DataError
from pretrainlab.fsio import atomic_write_json, atomic_write_text, sha256_file
from pretrainlab.progress import console, progress_bar

from pretrainlab.tokenizer.vocab import SPECIAL_TOKENS, TOKENIZER_FILE  # specials: ids 0, 1, 2 in order

MANIFEST_FILE = "manifest.json"


# --------------------------------------------------------------------------- corpus access


def find_corpus_sources(corpus_dir: Path, *, stage_hint: str = "pretrainlab data build") -> list[str]:
    """Sorted names of the source folders in a clean corpus that hold a ``train.jsonl``."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise DataError(f"clean corpus not found: {corpus_dir}; run `{stage_hint}` first (or point the config at it)")
    sources = sorted(p.name for p in corpus_dir.iterdir() if p.is_dir() and (p / "train.jsonl").is_file())
    if not sources:
        raise DataError(
            f"no <source>/train.jsonl found in {corpus_dir}; it is not a clean corpus, run `{stage_hint}`"
        )
    return sources


def corpus_manifest_sha256(corpus_dir: Path) -> str | None:
    path = Path(corpus_dir) / "manifest.json"
    return sha256_file(path) if path.is_file() else None


def iter_texts(path: Path) -> Iterator[str]:
    """Texts of a clean-corpus JSONL file, in file order."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(
                    f"{path}:{lineno}: not a clean-corpus record with a 'text' field; "
                    "re-run `pretrainlab data build`"
                ) from None
            if not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: 'text' is not a string; re-run `pretrainlab data build`")
            yield text


def _count_chars(path: Path) -> int:
    return sum(len(t) for t in iter_texts(path))


def _sample_source(path: Path, budget: int, total: int) -> Iterator[str]:
    """Up to ``budget`` characters of a source, spread evenly over its documents.

    A running credit grows by ``budget/total`` of each document's length; a
    document is taken once the credit covers it (a Bresenham-style stride), and
    the last one is cut so the total never exceeds the budget.
    """
    if budget >= total:
        yield from iter_texts(path)
        return
    frac = budget / total
    credit, used = 0.0, 0
    for text in iter_texts(path):
        if used >= budget:
            return
        credit += frac * len(text)
        if credit >= len(text):
            credit -= len(text)
            text = text[: budget - used]
            used += len(text)
            yield text


def _plan_sample(corpus_dir: Path, sources: list[str], sample_chars: int) -> dict[str, tuple[int, int]]:
    """Per source: (budget, total chars or an upper bound) with budgets proportional, summing to <= sample_chars."""
    paths = {s: corpus_dir / s / "train.jsonl" for s in sources}
    # Bytes bound characters from above: when the files are small enough, no counting pass.
    sizes = {s: p.stat().st_size for s, p in paths.items()}
    if sum(sizes.values()) <= sample_chars:
        return {s: (sample_chars, sizes[s]) for s in sources}  # budget >= size: take everything
    totals = {s: _count_chars(p) for s, p in paths.items()}
    grand = sum(totals.values())
    if grand <= sample_chars:
        return {s: (t, t) for s, t in totals.items()}
    return {s: (sample_chars * t // grand, t) for s, t in totals.items()}


# --------------------------------------------------------------------------- training


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(cfg: ProjectConfig) -> dict:
    """Train the BPE tokenizer described by ``cfg.tokenizer``; returns the manifest it wrote."""
    from tokenizers import pre_tokenizers, trainers

    t0 = time.perf_counter()
    corpus_dir = Path(cfg.tokenizer_corpus_dir)
    sources = find_corpus_sources(corpus_dir)
    tcfg = cfg.tokenizer
    plan = _plan_sample(corpus_dir, sources, tcfg.sample_chars)

    stats = {s: {"docs": 0, "chars": 0} for s in sources}

    def texts(bar) -> Iterator[str]:
        for s in sources:
            budget, total = plan[s]
            for text in _sample_source(corpus_dir / s / "train.jsonl", budget, total):
                stats[s]["docs"] += 1
                stats[s]["chars"] += len(text)
                bar.advance(len(text))
                if text:
                    yield text

    tok = _build_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=tcfg.vocab_size,
        min_frequency=tcfg.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    expected = min(tcfg.sample_chars, sum(min(b, t) for b, t in plan.values()))
    with progress_bar("tokenizer: reading + training BPE", expected, unit="chars") as bar:
        tok.train_from_iterator(texts(bar), trainer=trainer)
    chars = sum(v["chars"] for v in stats.values())
    if chars == 0:
        raise DataError(f"clean corpus {corpus_dir} has no training text; check `pretrainlab data build` output")

    for i, name in enumerate(SPECIAL_TOKENS):  # the trainer assigns specials first; make sure
        if tok.token_to_id(name) != i:
            raise RuntimeError(f"special token {name} got id {tok.token_to_id(name)}, expected {i}")

    out = Path(cfg.tokenizer_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / TOKENIZER_FILE, tok.to_str(pretty=True))
    import tokenizers

    manifest = {
        "kind": "pretrainlab.tokenizer",
        "tokenizer_file": TOKENIZER_FILE,
        "tokenizer_sha256": sha256_file(out / TOKENIZER_FILE),
        "type": "byte-level BPE",
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "requested_vocab_size": tcfg.vocab_size,
        "special_tokens": {name: i for i, name in enumerate(SPECIAL_TOKENS)},
        "pad_id": 0,
        "bos_id": 1,
        "eos_id": 2,
        "corpus_dir": str(corpus_dir),
        "corpus_manifest_sha256": corpus_manifest_sha256(corpus_dir),
        "sources": stats,
        "chars_trained": chars,
        "docs_trained": sum(v["docs"] for v in stats.values()),
        "config": config_to_dict(tcfg),
        "seconds": round(time.perf_counter() - t0, 3),
        "code_version": __version__,
        "tokenizers_version": tokenizers.__version__,
        "rayon_threads": os.environ.get("RAYON_NUM_THREADS"),
    }
    atomic_write_json(out / MANIFEST_FILE, manifest)
    if manifest["vocab_size"] < tcfg.vocab_size:
        console.print(
            f"[yellow]tokenizer: corpus too small for {tcfg.vocab_size} tokens; "
            f"got {manifest['vocab_size']} (no more pairs with frequency >= {tcfg.min_frequency})"
        )
    return manifest
