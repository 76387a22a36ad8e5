"""Where a clean corpus keeps its documents: numbered parts per source and split.

``data build`` writes ``<corpus>/<source>/train-NNNNN.jsonl`` and
``heldout-NNNNN.jsonl``, one pair per work unit of the source (a file, a run of small
files or a byte range of a large file; :func:`pretrainlab.data.executor.plan_units`), so
the split into parts depends on the input and ``data.executor.unit_mb`` only -- never on
how many workers or tasks ran. Concatenated in part order, a split's parts are the
documents in read order. Every reader of a clean corpus goes through :func:`split_parts`;
a corpus written before parts existed (``<source>/train.jsonl``) still reads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

SPLITS = ("train", "heldout")
_PART = re.compile(r"^(train|heldout)-(\d{5,})\.jsonl$")


def part_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.jsonl"


def split_parts(corpus_dir: str | Path, source: str, split: str) -> list[Path]:
    """The files holding ``split`` of ``source``, in order (empty list: the split has none)."""
    folder = Path(corpus_dir) / source
    try:
        names = [n for n in (m.group(0) for m in map(_PART.match, os.listdir(folder)) if m) if n.startswith(split + "-")]
    except FileNotFoundError:
        return []
    if names:
        return [folder / n for n in sorted(names, key=lambda n: int(n[len(split) + 1:-len(".jsonl")]))]
    legacy = folder / f"{split}.jsonl"
    return [legacy] if legacy.is_file() else []


def has_split(corpus_dir: str | Path, source: str, split: str = "train") -> bool:
    return bool(split_parts(corpus_dir, source, split))


def split_bytes(corpus_dir: str | Path, source: str, split: str) -> int:
    return sum(p.stat().st_size for p in split_parts(corpus_dir, source, split))


def iter_lines(paths: list[Path]) -> Iterator[bytes]:
    """Raw lines of the parts, in order."""
    for path in paths:
        with open(path, "rb") as fh:
            yield from fh


def read_split_bytes(corpus_dir: str | Path, source: str, split: str) -> bytes:
    """The whole split as one byte string (small corpora and tests)."""
    return b"".join(p.read_bytes() for p in split_parts(corpus_dir, source, split))
