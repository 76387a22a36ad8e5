"""Streaming readers: jsonl, jsonl.gz, jsonl.zst, parquet and plain-text folders.

Each yields :class:`~pretrainlab.data.stages.Document` or
:class:`~pretrainlab.data.sources.BadRecord` one at a time, so memory stays
bounded by the largest record (and records over ``max_doc_bytes`` are never
held whole: a JSONL line is read in slices and dropped). A bad record, an
unreadable or corrupt file is reported with a reason and the reader moves on:
nothing a record contains (nesting past the recursion limit, a 5,000-digit number)
stops a build. Compression is detected by content (gzip / zstd magic bytes), not by
the file name, and a UTF-8 byte-order mark at the start of a file is skipped.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path

from pretrainlab.data.sources import PREVIEW_CHARS, BadRecord, SourceSpec
from pretrainlab.data.stages import Document

_SLICE = 1 << 20
BOM = b"\xef\xbb\xbf"
MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}
MAX_META_DEPTH = 64  # deeper ``meta`` is refused: writing or pickling it could exceed the recursion limit

try:
    from zstandard import ZstdError as _ZstdError
except ImportError:  # zstandard missing: .zst sources fail with a clear message when opened
    class _ZstdError(Exception):
        pass


def compression(path: Path) -> str | None:
    """'gzip' or 'zstd' when the file starts with that format's magic bytes, else None (plain)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    return next((kind for magic, kind in MAGIC.items() if head.startswith(magic)), None)


def _open_binary(path: Path):
    kind = compression(path)
    if kind == "gzip":
        return gzip.open(path, "rb")
    if kind == "zstd":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True), _SLICE)
    return open(path, "rb")


def _lines(fh, limit: int, lineno: int = 0, budget: int | None = None) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, bytes or None when longer than ``limit``, size) without holding an oversized line;
    stops after ``budget`` bytes (a byte range that ends at a line start)."""
    consumed = 0
    while budget is None or consumed < budget:
        raw = fh.readline(limit + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) <= limit or raw.endswith(b"\n"):
            consumed += len(raw)
            yield lineno, raw, len(raw)
            continue
        size = len(raw)
        while raw and not raw.endswith(b"\n"):
            raw = fh.readline(_SLICE)
            size += len(raw)
        consumed += size
        yield lineno, None, size


def _deeper_than(obj, limit: int) -> bool:
    """Whether lists/dicts in ``obj`` nest more than ``limit`` levels (iterative: no recursion)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


def _record_to_doc(rec, spec: SourceSpec, rid_default: str, lineno: int | None, preview: str) -> Document | BadRecord:
    where = f"line {lineno}" if lineno is not None else "row"
    if not isinstance(rec, dict):
        return BadRecord(rid_default, lineno, "not_an_object", f"{where}: expected a JSON object, got {type(rec).__name__}", preview)
    rid = rec.get("id")
    rid = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid) else rid_default
    text = rec.get(spec.text_field)
    if text is None:
        return BadRecord(rid, lineno, "missing_text", f"{where}: no '{spec.text_field}' field", preview)
    if not isinstance(text, str):
        return BadRecord(rid, lineno, "text_not_string", f"{where}: '{spec.text_field}' is a {type(text).__name__}, not a string", preview)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return BadRecord(rid, lineno, "invalid_utf8", f"{where}: text has unpaired surrogate escapes (not encodable as UTF-8)", preview)
    if not text.strip():
        return BadRecord(rid, lineno, "empty_text", f"{where}: '{spec.text_field}' is empty", preview)
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    if _deeper_than(meta, MAX_META_DEPTH):
        return BadRecord(rid, lineno, "too_deep", f"{where}: 'meta' nests deeper than {MAX_META_DEPTH} levels", preview)
    return Document(rid, text, spec.name, meta)


def read_jsonl(spec: SourceSpec, path: Path, prefix: str, max_doc_bytes: int,
               byte_range: tuple[int, int, int] | None = None) -> Iterator[Document | BadRecord]:
    """One JSON object per line; decoded per line so one bad line never hides the rest.
    ``byte_range`` = (start, end, line number at start) reads part of a plain JSONL file
    (start and end are line starts, see :func:`~pretrainlab.data.sources.scan_file`)."""
    lineno = 0
    try:
        with _open_binary(path) as fh:
            budget = None
            if byte_range is not None:
                start, end, first_line = byte_range
                fh.seek(start)
                lineno, budget = first_line - 1, end - start
            for lineno, raw, size in _lines(fh, max_doc_bytes, lineno, budget):
                bad_id = f"{prefix}line{lineno}"
                if raw is None:
                    yield BadRecord(bad_id, lineno, "too_large", f"line {lineno}: {size:,} bytes > data.max_doc_bytes={max_doc_bytes:,}", "")
                    continue
                if lineno == 1 and raw.startswith(BOM):  # the first line of the file (a byte range from 0)
                    raw = raw[len(BOM):]
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    preview = raw.rstrip(b"\r\n")[:PREVIEW_CHARS].decode("utf-8", "replace")
                    yield BadRecord(bad_id, lineno, "invalid_utf8", f"line {lineno}: not valid UTF-8 ({exc.reason} at byte {exc.start})", preview)
                    continue
                line = line.rstrip("\r\n")
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield BadRecord(bad_id, lineno, "invalid_json", f"line {lineno}: invalid JSON ({exc.msg} at column {exc.colno})", line[:PREVIEW_CHARS])
                    continue
                except RecursionError:
                    yield BadRecord(bad_id, lineno, "too_deep", f"line {lineno}: JSON nested too deeply to parse", line[:PREVIEW_CHARS])
                    continue
                except ValueError as exc:  # e.g. an integer of more than 4,300 digits
                    yield BadRecord(bad_id, lineno, "invalid_json", f"line {lineno}: invalid JSON ({str(exc).split(';')[0]})", line[:PREVIEW_CHARS])
                    continue
                yield _record_to_doc(rec, spec, bad_id, lineno, line[:PREVIEW_CHARS])
    except (OSError, EOFError, ValueError, _ZstdError) as exc:  # how gzip/zstd corruption surfaces
        code = "unreadable_file" if isinstance(exc, (PermissionError, FileNotFoundError, IsADirectoryError)) else "corrupt_file"
        yield BadRecord(f"{prefix}{path.name}", lineno or None, code, f"{path}: {code.replace('_', ' ')} after line {lineno}: {exc}", "")


def read_parquet(spec: SourceSpec, path: Path, prefix: str, max_doc_bytes: int) -> Iterator[Document | BadRecord]:
    """Row batches of 1,024 rows, only the text (and id/meta, when present) columns."""
    try:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
    except Exception as exc:  # pyarrow raises its own error types for bad files
        yield BadRecord(f"{prefix}{path.name}", None, "corrupt_file", f"{path}: not a readable parquet file ({exc})", "")
        return
    if spec.text_field not in names:
        yield BadRecord(f"{prefix}{path.name}", None, "missing_text", f"{path}: no column '{spec.text_field}' (columns: {', '.join(sorted(names))})", "")
        return
    columns = [c for c in (spec.text_field, "id", "meta") if c in names]
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=1024, columns=columns):
            for rec in batch.to_pylist():
                row += 1
                rid = f"{prefix}row{row}"
                text = rec.get(spec.text_field)
                if isinstance(text, str) and len(text) > max_doc_bytes:
                    yield BadRecord(rid, row, "too_large", f"row {row}: {len(text):,} chars > data.max_doc_bytes={max_doc_bytes:,}", "")
                    continue
                yield _record_to_doc(rec, spec, rid, row, str(text)[:PREVIEW_CHARS])
    except Exception as exc:
        yield BadRecord(f"{prefix}{path.name}", row or None, "corrupt_file", f"{path}: corrupt after row {row}: {exc}", "")


def read_text_file(spec: SourceSpec, path: Path, root: Path, max_doc_bytes: int) -> Iterator[Document | BadRecord]:
    """A plain-text file is one document; binary files (NUL bytes) and non-UTF-8 files are reported."""
    rel = path.relative_to(root).as_posix() if root in path.parents else path.name
    rid = f"{spec.name}:{rel}"
    try:
        size = path.stat().st_size
        if size > max_doc_bytes:
            yield BadRecord(rid, None, "too_large", f"{rel}: {size:,} bytes > data.max_doc_bytes={max_doc_bytes:,}", "")
            return
        data = path.read_bytes()
    except OSError as exc:
        yield BadRecord(rid, None, "unreadable_file", f"{rel}: cannot read ({exc.strerror or exc})", "")
        return
    if data.startswith(BOM):
        data = data[len(BOM):]
    if b"\x00" in data[:8192]:
        yield BadRecord(rid, None, "binary_file", f"{rel}: binary file (NUL bytes), not text", "")
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield BadRecord(rid, None, "invalid_utf8", f"{rel}: not valid UTF-8 ({exc.reason} at byte {exc.start})",
                        data[:PREVIEW_CHARS].decode("utf-8", "replace"))
        return
    if not text.strip():
        yield BadRecord(rid, None, "empty_text", f"{rel}: empty file", "")
        return
    yield Document(rid, text, spec.name, {"path": rel})


def read_source(spec: SourceSpec, max_doc_bytes: int, files: list[int] | None = None,
                byte_range: tuple[int, int, int] | None = None) -> Iterator[Document | BadRecord]:
    """Every record of the source's files (indices ``files`` into ``spec.files``; default all),
    files in sorted order; ``byte_range`` restricts a single plain JSONL file to part of it."""
    multi = len(spec.files) > 1
    root = spec.path if spec.path.is_dir() else spec.path.parent
    for i in range(len(spec.files)) if files is None else files:
        path = spec.files[i]
        if spec.format == "text":
            yield from read_text_file(spec, path, root, max_doc_bytes)
            continue
        prefix = f"{spec.name}:{path.name}:" if multi else f"{spec.name}:"
        if spec.format == "parquet":
            yield from read_parquet(spec, path, prefix, max_doc_bytes)
        else:
            yield from read_jsonl(spec, path, prefix, max_doc_bytes, byte_range)
