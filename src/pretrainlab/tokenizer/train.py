"""`tokenizer train`: the text tokenizer (byte-level BPE or SentencePiece) and its vocabulary spec.

Kinds (``tokenizer.kind``):

* ``bpe``: byte-level BPE with Hugging Face `tokenizers`. Every byte maps to one of
  256 base symbols, so any text encodes without an unknown token and decodes back exactly.
* ``sp_bpe`` / ``sp_unigram``: SentencePiece BPE / unigram, identity normalization, no
  dummy prefix, byte fallback (characters outside the pieces become ``<0xNN>`` byte
  pieces, so nothing is unknown). Round trip is exact except for the character
  U+2581 (SentencePiece's space symbol), which decodes as a space.

Training reads at most ``tokenizer.sample_chars`` characters of the *train* split,
spread over sources in proportion to their size and over each source's documents
evenly (a deterministic stride, no RNG), so the same corpus and config always give
byte-identical files (SentencePiece also gets ``tokenizer.seed``).

Outputs in ``cfg.tokenizer_dir`` (written in this order, so a crash never leaves a
spec describing a model it does not match):

* ``tokenizer.json`` (bpe; loadable by ``tokenizers.Tokenizer.from_file`` and
  ``transformers.PreTrainedTokenizerFast``, modality tokens included as special
  tokens) or ``tokenizer.model`` (SentencePiece).
* ``vocab_spec.json``: the id layout (see ``spec.py``); its sha256 is the tokenizer hash.
* ``manifest.json``: tokenizer hash, sizes, corpus manifest sha256, characters per
  source, config, seconds, library versions.

A corpus too small for the requested vocabulary is a DataError (nothing is written).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import sentencepiece as spm
import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pretrainlab import __version__
from pretrainlab.config import ProjectConfig, config_to_dict
from pretrainlab.data.corpusfiles import has_split, split_parts
from pretrainlab.errors import DataError
from pretrainlab.fsio import atomic_write_bytes, atomic_write_json, sha256_file
from pretrainlab.progress import console, progress_bar

from pretrainlab.tokenizer.spec import CONTROL_TOKENS, SPEC_FILE, VocabSpec
from pretrainlab.tokenizer.vocab import SP_MODEL_FILE, TOKENIZER_FILE, load_tokenizer

MANIFEST_FILE = "manifest.json"


# --------------------------------------------------------------------------- corpus access


def find_corpus_sources(corpus_dir: Path, *, stage_hint: str = "pretrainlab data build") -> list[str]:
    """Sorted names of the source folders in a clean corpus that hold train parts (``train-NNNNN.jsonl``)."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise DataError(f"clean corpus not found: {corpus_dir}; run `{stage_hint}` first (or point the config at it)")
    sources = sorted(p.name for p in corpus_dir.iterdir() if p.is_dir() and has_split(corpus_dir, p.name, "train"))
    if not sources:
        raise DataError(
            f"no <source>/train-00000.jsonl found in {corpus_dir}; it is not a clean corpus, run `{stage_hint}`"
        )
    return sources


def corpus_manifest_sha256(corpus_dir: Path) -> str | None:
    path = Path(corpus_dir) / "manifest.json"
    return sha256_file(path) if path.is_file() else None


def iter_texts(paths: Path | list[Path]) -> Iterator[str]:
    """Texts of clean-corpus JSONL files (one, or a split's parts), in order."""
    for path in [paths] if isinstance(paths, Path) else paths:
        yield from _texts_of(path)


def _texts_of(path: Path) -> Iterator[str]:
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


def _count_chars(paths: list[Path]) -> int:
    return sum(len(t) for t in iter_texts(paths))


def _sample_source(paths: list[Path], budget: int, total: int) -> Iterator[str]:
    """Up to ``budget`` characters of a source, spread evenly over its documents.

    A running credit grows by ``budget/total`` of each document's length; a
    document is taken once the credit covers it (a Bresenham-style stride), and
    the last one is cut so the total never exceeds the budget.
    """
    if budget >= total:
        yield from iter_texts(paths)
        return
    frac = budget / total
    credit, used = 0.0, 0
    for text in iter_texts(paths):
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
    paths = {s: split_parts(corpus_dir, s, "train") for s in sources}
    # Bytes bound characters from above: when the files are small enough, no counting pass.
    sizes = {s: sum(p.stat().st_size for p in ps) for s, ps in paths.items()}
    if sum(sizes.values()) <= sample_chars:
        return {s: (sample_chars, sizes[s]) for s in sources}  # budget >= size: take everything
    totals = {s: _count_chars(p) for s, p in paths.items()}
    grand = sum(totals.values())
    if grand <= sample_chars:
        return {s: (t, t) for s, t in totals.items()}
    return {s: (sample_chars * t // grand, t) for s, t in totals.items()}


# --------------------------------------------------------------------------- training

SP_CHUNK_CHARS = 2048  # SentencePiece trains on "sentences" of at most max_sentence_length bytes


def _too_small(corpus_dir: Path, want: int, got: int, why: str) -> DataError:
    return DataError(
        f"clean corpus {corpus_dir} is too small for a {want}-token vocabulary ({why}); "
        f"lower tokenizer.vocab_size to at most {got} or train on more text"
    )


def _train_bpe(texts: Iterator[str], tcfg, corpus_dir: Path, named_after_text: list[str], stats_chars) -> tuple[str, int]:
    """Byte-level BPE; returns (tokenizer.json text, text vocabulary size)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=tcfg.vocab_size,
        min_frequency=tcfg.min_frequency,
        special_tokens=list(CONTROL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    size = tok.get_vocab_size(with_added_tokens=True)
    if stats_chars() == 0:
        raise DataError(f"clean corpus {corpus_dir} has no training text; check `pretrainlab data build` output")
    if size < tcfg.vocab_size:
        raise _too_small(corpus_dir, tcfg.vocab_size, size, f"BPE found no more pairs with frequency >= {tcfg.min_frequency}")
    for i, name in enumerate(CONTROL_TOKENS):  # the trainer assigns specials first; make sure
        if tok.token_to_id(name) != i:
            raise RuntimeError(f"special token {name} got id {tok.token_to_id(name)}, expected {i}")
    # Modality tokens go into tokenizer.json too (ids right after the text), so an exported
    # Hugging Face tokenizer knows them; the spec checks the ids match.
    tok.add_special_tokens(named_after_text)
    return tok.to_str(pretty=True), size


def _sp_sentences(texts: Iterator[str]) -> Iterator[str]:
    """Documents cut at line ends into pieces of at most SP_CHUNK_CHARS characters."""
    for text in texts:
        start = 0
        while start < len(text):
            end = min(len(text), start + SP_CHUNK_CHARS)
            if end < len(text):
                nl = text.rfind("\n", start, end)
                end = nl + 1 if nl > start else end
            yield text[start:end]
            start = end


def _train_sentencepiece(texts: Iterator[str], tcfg, corpus_dir: Path, stats_chars) -> tuple[bytes, int]:
    """SentencePiece BPE/unigram with byte fallback; returns (model bytes, text vocabulary size)."""
    spm.set_random_generator_seed(tcfg.seed)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sp_sentences(texts),
            model_writer=buf,
            model_type=tcfg.kind.removeprefix("sp_"),
            vocab_size=tcfg.vocab_size,
            character_coverage=tcfg.character_coverage,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            max_sentence_length=4 * SP_CHUNK_CHARS,
            input_sentence_size=0,
            pad_id=0, bos_id=1, eos_id=2, unk_id=3,
            pad_piece=CONTROL_TOKENS[0], bos_piece=CONTROL_TOKENS[1], eos_piece=CONTROL_TOKENS[2],
            unk_piece=CONTROL_TOKENS[3],
            control_symbols=list(CONTROL_TOKENS[4:]),
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as exc:
        if stats_chars() == 0:
            raise DataError(f"clean corpus {corpus_dir} has no training text; check `pretrainlab data build` output") from None
        msg = str(exc)
        m = re.search(r"value <= (\d+)", msg)
        if m:
            raise _too_small(corpus_dir, tcfg.vocab_size, int(m.group(1)), "not enough distinct pieces") from None
        m = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", msg)
        if m:
            raise DataError(
                f"tokenizer.vocab_size={tcfg.vocab_size} is too small for the {m.group(2)} characters and control/byte "
                "pieces SentencePiece must keep; raise tokenizer.vocab_size or lower tokenizer.character_coverage"
            ) from None
        raise DataError(f"SentencePiece training failed: {msg.splitlines()[-1][:200]}") from None
    model = buf.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=model)
    if sp.get_piece_size() < tcfg.vocab_size:
        raise _too_small(corpus_dir, tcfg.vocab_size, sp.get_piece_size(), "SentencePiece found fewer pieces")
    for i, name in enumerate(CONTROL_TOKENS):
        if sp.id_to_piece(i) != name:
            raise RuntimeError(f"SentencePiece put {sp.id_to_piece(i)} at id {i}, expected {name}")
    return model, sp.get_piece_size()


def train_tokenizer(cfg: ProjectConfig) -> dict:
    """Train the tokenizer described by ``cfg.tokenizer``; writes model, spec and manifest; returns the manifest."""
    t0 = time.perf_counter()
    corpus_dir = Path(cfg.tokenizer_corpus_dir)
    sources = find_corpus_sources(corpus_dir)
    tcfg = cfg.tokenizer
    plan = _plan_sample(corpus_dir, sources, tcfg.sample_chars)

    stats = {s: {"docs": 0, "chars": 0} for s in sources}

    def texts(bar) -> Iterator[str]:
        for s in sources:
            budget, total = plan[s]
            for text in _sample_source(split_parts(corpus_dir, s, "train"), budget, total):
                stats[s]["docs"] += 1
                stats[s]["chars"] += len(text)
                bar.advance(len(text))
                if text:
                    yield text

    def chars() -> int:
        return sum(v["chars"] for v in stats.values())

    # The named tokens after the text range depend only on config, not on the trained model.
    layout = VocabSpec.from_config(tcfg, text_kind=tcfg.kind, text_file="-", text_sha256="-", text_size=tcfg.vocab_size)
    after_text = [t for t, i in sorted(layout.tokens.items(), key=lambda kv: kv[1]) if i >= tcfg.vocab_size]

    expected = min(tcfg.sample_chars, sum(min(b, t) for b, t in plan.values()))
    label = {"bpe": "byte-level BPE", "sp_bpe": "SentencePiece BPE", "sp_unigram": "SentencePiece unigram"}[tcfg.kind]
    with progress_bar(f"tokenizer: reading + training {label}", expected, unit="chars") as bar:
        if tcfg.kind == "bpe":
            data, text_size = _train_bpe(texts(bar), tcfg, corpus_dir, after_text, chars)
            file_name, payload = TOKENIZER_FILE, data.encode("utf-8")
        else:
            payload, text_size = _train_sentencepiece(texts(bar), tcfg, corpus_dir, chars)
            file_name = SP_MODEL_FILE
    if chars() == 0:
        raise DataError(f"clean corpus {corpus_dir} has no training text; check `pretrainlab data build` output")

    spec = VocabSpec.from_config(
        tcfg, text_kind=tcfg.kind, text_file=file_name, text_sha256=hashlib.sha256(payload).hexdigest(), text_size=text_size
    )
    out = Path(cfg.tokenizer_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / file_name, payload)
    spec.save(out)
    for stale in {TOKENIZER_FILE, SP_MODEL_FILE} - {file_name}:  # a previous run of another kind
        (out / stale).unlink(missing_ok=True)
    tok = load_tokenizer(out)  # re-reads and validates what was written
    if tcfg.kind == "bpe":
        for name in after_text:
            if tok.backend.token_to_id(name) != spec.tokens[name]:
                raise RuntimeError(f"{name} has id {tok.backend.token_to_id(name)} in tokenizer.json, {spec.tokens[name]} in the spec")

    manifest = {
        "kind": "pretrainlab.tokenizer",
        "tokenizer_kind": tcfg.kind,
        "type": label,
        "tokenizer_file": file_name,
        "spec_file": SPEC_FILE,
        "tokenizer_sha256": tok.sha256,
        "text_sha256": spec.text_sha256,
        "vocab_size": spec.total_size,
        "text_vocab_size": text_size,
        "requested_vocab_size": tcfg.vocab_size,
        "ranges": {n: {"start": s, "size": z} for n, (s, z) in spec.ranges.items()},
        "special_tokens": {name: i for i, name in enumerate(CONTROL_TOKENS)},
        "pad_id": tok.pad_id,
        "bos_id": tok.bos_id,
        "eos_id": tok.eos_id,
        "unk_id": tok.unk_id,
        "corpus_dir": str(corpus_dir.resolve()),  # absolute: the manifest is read from anywhere
        "corpus_manifest_sha256": corpus_manifest_sha256(corpus_dir),
        "sources": stats,
        "chars_trained": chars(),
        "docs_trained": sum(v["docs"] for v in stats.values()),
        "config": config_to_dict(tcfg),
        "seconds": round(time.perf_counter() - t0, 3),
        "code_version": __version__,
        "tokenizers_version": tokenizers.__version__,
        "sentencepiece_version": _sp_version() if tcfg.kind != "bpe" else None,
        "rayon_threads": os.environ.get("RAYON_NUM_THREADS"),
    }
    atomic_write_json(out / MANIFEST_FILE, manifest)
    console.print(f"tokenizer: {label}, {text_size:,} text ids, {spec.total_size:,} ids in all (see {SPEC_FILE}) -> {out}")
    return manifest


def _sp_version() -> str:
    return spm.__version__
