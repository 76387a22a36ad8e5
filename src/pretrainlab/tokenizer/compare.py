"""`tokenizer compare`: compression, fertility and fallback rates of tokenizers on the clean corpus.

Given tokenizer directories, or else training the grid ``tokenizer.compare_kinds`` x
``tokenizer.compare_vocab_sizes`` into ``<compare_out>/<kind>-<size>/`` (a grid entry whose
manifest shows the same config and corpus is reused), it encodes the first
``compare_max_chars`` characters of every source's ``compare_split`` and reports:

* characters per token and UTF-8 bytes per token (higher = better compression), overall,
  per source and per language. The language is the record's ``lang``/``language`` field
  (top level or in ``meta``) when present, else guessed from the script: ``zh`` when Han
  characters, counted four times (one carries about as much as a short English word), are
  at least as many as Latin letters; ``en`` for other Latin-script text; else ``other``.
* fertility: English = tokens per word (each ``[A-Za-z]+`` word of the measured text
  encoded with its leading space, weighted by its count); Chinese = tokens per Han
  character (each maximal run of Han characters encoded on its own). Lower is better.
* unknown rate (share of tokens that are ``<|unk|>``) and byte-fallback rate (share of
  tokens that are not whole characters: SentencePiece ``<0xNN>`` pieces, or byte-level
  BPE tokens whose bytes are not valid UTF-8 by themselves).

Writes ``compare.json`` and ``compare.html`` (self-contained, opens offline) into the
output folder and prints the main table.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich import box
from rich.table import Table

from pretrainlab import __version__
from pretrainlab.config import ProjectConfig, config_to_dict
from pretrainlab.data.corpusfiles import split_parts
from pretrainlab.errors import DataError
from pretrainlab.fsio import atomic_write_json, atomic_write_text, read_json
from pretrainlab.htmlkit import CSS
from pretrainlab.progress import console, track
from pretrainlab.tokenizer.train import corpus_manifest_sha256, find_corpus_sources, train_tokenizer
from pretrainlab.tokenizer.vocab import TextTokenizer, load_tokenizer

EN_WORD = re.compile(r"[A-Za-z]+")
HAN_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")
LANG_KEYS = ("lang", "language")


@dataclass
class EvalDoc:
    source: str
    lang: str
    text: str


# --------------------------------------------------------------------------- the measured text


def guess_language(text: str) -> str:
    """zh / en / other from the script of the first 4,000 characters."""
    head = text[:4000]
    han = sum(len(m) for m in HAN_RUN.findall(head))
    latin = len(LATIN.findall(head))
    if han and 4 * han >= latin:
        return "zh"
    return "en" if latin else "other"


def _record_language(rec: dict) -> str | None:
    for where in (rec, rec.get("meta") if isinstance(rec.get("meta"), dict) else {}):
        for key in LANG_KEYS:
            v = where.get(key)
            if isinstance(v, str) and v.strip():
                return re.split(r"[-_]", v.strip().lower())[0]
    return None


def _numbered_lines(path: Path):
    with open(path, encoding="utf-8") as fh:
        yield from enumerate(fh, 1)


def load_eval_docs(corpus_dir: Path, split: str, max_chars: int) -> list[EvalDoc]:
    """The first documents of every source's split, up to ``max_chars`` characters per source."""
    docs: list[EvalDoc] = []
    for source in find_corpus_sources(corpus_dir):
        used = 0
        for path in split_parts(corpus_dir, source, split):
            if used >= max_chars:
                break
            for lineno, line in _numbered_lines(path):
                if used >= max_chars:
                    break
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    text = rec["text"]
                    if not isinstance(text, str):
                        raise TypeError
                except (ValueError, KeyError, TypeError):
                    raise DataError(f"{path}:{lineno}: not a clean-corpus record with a 'text' string; "
                                    "re-run `pretrainlab data build`") from None
                text = text[: max_chars - used]
                used += len(text)
                if text:
                    docs.append(EvalDoc(source, _record_language(rec) or guess_language(text), text))
    if not docs:
        raise DataError(f"no text in the '{split}' split of {corpus_dir}; set tokenizer.compare_split=train or rebuild the corpus")
    return docs


# --------------------------------------------------------------------------- metrics


def _ratios(chars: int, nbytes: int, tokens: int) -> dict:
    return {
        "chars": chars, "bytes": nbytes, "tokens": tokens,
        "chars_per_token": chars / tokens if tokens else None,
        "bytes_per_token": nbytes / tokens if tokens else None,
    }


def _fertility(tok: TextTokenizer, pieces: Counter, denominator) -> float | None:
    if not pieces:
        return None
    items = sorted(pieces.items())
    lens = [len(ids) for ids in tok.encode_batch([p for p, _ in items])]
    num = sum(n * c for n, (_, c) in zip(lens, items))
    den = sum(denominator(p) * c for p, c in items)
    return num / den if den else None


def measure(tok: TextTokenizer, docs: list[EvalDoc]) -> dict:
    """Every metric of one tokenizer on ``docs``."""
    t0 = time.perf_counter()
    encoded = tok.encode_batch([d.text for d in docs])
    seconds = time.perf_counter() - t0
    lens = np.array([len(ids) for ids in encoded], dtype=np.int64)
    flat = np.fromiter((i for ids in encoded for i in ids), dtype=np.int64, count=int(lens.sum()))
    fallback = tok.text_model.byte_fallback_mask(tok.text_vocab_size)
    doc_of = np.repeat(np.arange(len(docs)), lens)
    unk_per_doc = np.bincount(doc_of[flat == tok.unk_id], minlength=len(docs))
    fb_per_doc = np.bincount(doc_of[fallback[flat]], minlength=len(docs))
    chars = np.array([len(d.text) for d in docs], dtype=np.int64)
    nbytes = np.array([len(d.text.encode("utf-8")) for d in docs], dtype=np.int64)

    def group(keys: list[str]) -> dict:
        out = {}
        for k in sorted(set(keys)):
            sel = np.array([x == k for x in keys])
            out[k] = _ratios(int(chars[sel].sum()), int(nbytes[sel].sum()), int(lens[sel].sum()))
        return out

    words = Counter(" " + w for d in docs for w in EN_WORD.findall(d.text))
    han = Counter(r for d in docs for r in HAN_RUN.findall(d.text))
    total = int(lens.sum())
    return {
        "overall": _ratios(int(chars.sum()), int(nbytes.sum()), total),
        "by_source": group([d.source for d in docs]),
        "by_language": group([d.lang for d in docs]),
        "fertility_en": _fertility(tok, words, lambda w: 1),
        "fertility_zh": _fertility(tok, han, len),
        "en_words": sum(words.values()),
        "zh_chars": sum(len(r) * c for r, c in han.items()),
        "unk_rate": float(unk_per_doc.sum() / total) if total else None,
        "byte_fallback_rate": float(fb_per_doc.sum() / total) if total else None,
        "encode_tokens_per_s": round(total / seconds) if seconds > 0 else None,
    }


# --------------------------------------------------------------------------- tokenizers to compare


def _grid_dirs(cfg: ProjectConfig) -> list[Path]:
    """Train (or reuse) one tokenizer per (kind, vocab size) of the compare grid."""
    tcfg = cfg.tokenizer
    sizes = tcfg.compare_vocab_sizes or [tcfg.vocab_size]
    corpus_sha = corpus_manifest_sha256(Path(cfg.tokenizer_corpus_dir))
    dirs = []
    for kind in tcfg.compare_kinds:
        for size in sizes:
            out = cfg.tokenizer_compare_dir / f"{kind}-{size}"
            variant = tcfg.model_copy(update={"kind": kind, "vocab_size": size, "out": out})
            try:
                m = read_json(out / "manifest.json")
                fresh = m.get("config") == config_to_dict(variant) and m.get("corpus_manifest_sha256") == corpus_sha
                load_tokenizer(out)
            except (OSError, ValueError, DataError):
                fresh = False
            if fresh and corpus_sha is not None:
                console.print(f"tokenizer compare: reusing {out}")
            else:
                train_tokenizer(cfg.model_copy(update={"tokenizer": variant}))
            dirs.append(out)
    return dirs


def compare_tokenizers(cfg: ProjectConfig, tokenizers: list[str | Path] | None = None) -> dict:
    """Measure the given tokenizers (or the trained grid); writes compare.json and compare.html."""
    t0 = time.perf_counter()
    tcfg = cfg.tokenizer
    corpus_dir = Path(cfg.tokenizer_corpus_dir)
    docs = load_eval_docs(corpus_dir, tcfg.compare_split, tcfg.compare_max_chars)  # fail early on a bad corpus
    dirs = [Path(p) for p in tokenizers] if tokenizers else _grid_dirs(cfg)
    toks = [load_tokenizer(p) for p in dirs]
    rows = []
    for path, tok in track(list(zip(dirs, toks)), "tokenizer compare: measuring", unit="tokenizers"):
        rows.append({
            "name": f"{tok.kind}-{tok.text_vocab_size}",
            "path": str(path),
            "kind": tok.kind,
            "text_vocab_size": tok.text_vocab_size,
            "vocab_size": tok.vocab_size,
            "tokenizer_sha256": tok.sha256,
            **measure(tok, docs),
        })
    names = Counter(r["name"] for r in rows)
    for r in rows:  # two tokenizers of the same kind and size: tell them apart by folder
        if names[r["name"]] > 1:
            r["name"] = f"{r['name']} ({Path(r['path']).name})"
    out = cfg.tokenizer_compare_dir
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "kind": "pretrainlab.tokenizer_compare",
        "corpus_dir": str(Path(corpus_dir).resolve()),
        "corpus_manifest_sha256": corpus_manifest_sha256(corpus_dir),
        "split": tcfg.compare_split,
        "max_chars_per_source": tcfg.compare_max_chars,
        "docs": len(docs),
        "sources": sorted({d.source for d in docs}),
        "languages": dict(sorted(Counter(d.lang for d in docs).items())),
        "tokenizers": rows,
        "seconds": round(time.perf_counter() - t0, 3),
        "code_version": __version__,
    }
    atomic_write_json(out / "compare.json", result)
    atomic_write_text(out / "compare.html", render_html(result))
    _print_table(rows)
    console.print(f"tokenizer compare: {out / 'compare.html'}")
    return result


# --------------------------------------------------------------------------- output


def _f(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return f"{v:,}"


MAIN_COLUMNS = [  # (HTML header, console header, cell)
    ("tokenizer", "tokenizer", lambda r: r["name"]),
    ("model vocab", "vocab", lambda r: _f(r["vocab_size"])),
    ("chars/token", "chr/tok", lambda r: _f(r["overall"]["chars_per_token"])),
    ("bytes/token", "B/tok", lambda r: _f(r["overall"]["bytes_per_token"])),
    ("fertility en (tokens/word)", "fert en", lambda r: _f(r["fertility_en"])),
    ("fertility zh (tokens/char)", "fert zh", lambda r: _f(r["fertility_zh"])),
    ("unk rate", "unk", lambda r: _f(r["unk_rate"], 4)),
    ("byte-fallback rate", "byte-fb", lambda r: _f(r["byte_fallback_rate"], 4)),
]


def _print_table(rows: list[dict]) -> None:
    table = Table(title="tokenizer compare", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for _, head, _ in MAIN_COLUMNS:
        table.add_column(head, justify="left" if head == "tokenizer" else "right", no_wrap=True, min_width=len(head))
    for r in rows:
        table.add_row(*(get(r) for _, _, get in MAIN_COLUMNS))
    console.print(table)


def _html_table(head: list[str], body: list[list[str]]) -> str:
    e = html.escape
    out = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    for row in body:
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return "".join(out) + "</table>"


def _bar_cell(v: float | None, vmax: float) -> str:
    if v is None:
        return "-"
    w = 0 if vmax <= 0 else round(120 * v / vmax)
    return f'<span class="bar" style="width:{w}px"></span> {_f(v)}'


def _group_table(rows: list[dict], key: str, metric: str) -> str:
    groups = sorted({g for r in rows for g in r[key]})
    vmax = max([r[key][g][metric] or 0 for r in rows for g in r[key]] or [0])
    body = [[html.escape(r["name"])] + [_bar_cell(r[key].get(g, {}).get(metric), vmax) for g in groups] for r in rows]
    return _html_table(["tokenizer", *groups], body)


def render_html(result: dict) -> str:
    """The comparison as one self-contained HTML page (inline CSS, no scripts)."""

    e = html.escape
    rows = result["tokenizers"]
    main = _html_table([h for h, _, _ in MAIN_COLUMNS], [[e(get(r)) for _, _, get in MAIN_COLUMNS] for r in rows])
    langs = ", ".join(f"{k}: {v} docs" for k, v in result["languages"].items())
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>tokenizer compare · pretrainlab</title>",
        f"<style>{CSS}\n.bar{{display:inline-block;height:10px;background:#1f77b4;vertical-align:middle}}</style></head><body>",
        "<h1>Tokenizer comparison</h1>",
        f"<p class=muted>{result['docs']} documents of the '{e(result['split'])}' split of {e(result['corpus_dir'])} "
        f"(at most {result['max_chars_per_source']:,} characters per source; {e(langs)}); pretrainlab {e(result['code_version'])}.</p>",
        "<div class=callout>chars/token and bytes/token: higher means fewer tokens for the same text. Fertility: "
        "tokens per English word and per Chinese (Han) character, lower is better. Byte-fallback rate: share of tokens "
        "that are not whole characters. Model vocab: the embedding rows the vocabulary spec needs.</div>",
        "<h2>Summary</h2>", main,
        "<h2>Characters per token, per source</h2>", _group_table(rows, "by_source", "chars_per_token"),
        "<h2>Bytes per token, per source</h2>", _group_table(rows, "by_source", "bytes_per_token"),
        "<h2>Characters per token, per language</h2>", _group_table(rows, "by_language", "chars_per_token"),
        "<h2>Bytes per token, per language</h2>", _group_table(rows, "by_language", "bytes_per_token"),
        "<h2>Tokenizers</h2>",
        _html_table(["tokenizer", "path", "tokenizer sha256", "tokens measured", "encode tokens/s"],
                    [[e(r["name"]), e(r["path"]), f"<code>{e(r['tokenizer_sha256'][:16])}</code>",
                      _f(r["overall"]["tokens"]), _f(r["encode_tokens_per_s"])] for r in rows]),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
