"""`pretrainlab corpus build`: an approved raw corpus made from text already on this machine.

Four sources, each optional (a source whose files are absent is skipped with a
one-line note on stderr, never an error):

- ``stdlib_code``: the running interpreter's standard library ``.py`` files, one
  document per file; tests (``test/``, ``tests/``, ``idle_test/``, ``test_*.py``,
  which also drops lib2to3's test data), ``site-packages`` and ``__pycache__``
  are excluded.
- ``stdlib_docstrings``: English prose from the same files. One document per
  *module*: every module, class and function docstring (``inspect.cleandoc``-ed),
  each headed by its qualified name on its own line, joined by blank lines. A
  single docstring is usually one or two lines -- too short to be a useful
  training document and below the data stage's ``min_chars`` -- while a module's
  docstrings together are typically 1-20 kB of coherent prose about one topic.
- ``man_pages``: pages from ``<root>/man1`` .. ``man8`` (locale directories such as
  ``de/`` are never looked at; symlinks and ``.so`` alias pages are skipped),
  rendered to plain text with ``groff -k -mandoc -t -Tutf8 -P-cbou`` at 78
  columns (what ``MANWIDTH=80 man -l`` does, without man's overhead: measured
  13 ms vs 34 ms per page here, and no ``col -bx`` pass is needed because
  ``-P-cbou`` already disables overstriking). Rendering runs on a 2-thread pool;
  a page that fails to render is skipped and counted.
- ``share_doc``: ``<root>/*/README*`` and ``<root>/*/copyright`` (decompressing
  ``.gz``/``.bz2``/``.xz``); binary or non-UTF-8 files are skipped and counted.
  Copyright texts repeat across packages, which exercises the dedup stage.

Size: ``corpus.size`` sets a per-source document cap and byte cap (``SIZE_CAPS``);
``corpus.max_docs_per_source`` overrides the document cap (the byte cap of the size
still applies; ``large`` has none). Capped sources take files in a deterministic
order: the sorted file list shuffled with ``random.Random(f"{seed}:{source}")``
(man pages interleave command families so gcloud's ~16k pages don't dominate).
Any single input larger than ``MAX_DOC_BYTES`` (generated tables, huge license
bundles) is skipped and counted so it cannot eat a small budget.

Outputs in ``cfg.raw_dir`` (each written atomically; the manifest last):

- ``<source>.jsonl``: ``{"id", "text", "source", "meta": {"path", ...}}`` per line;
- ``sources.yaml``: the source registry (path, format, text_field, languages,
  license, approval, modality, pii_policy, description) read by ``data build``;
- ``manifest.json``: inputs (path, sha256 of the bytes read, size), config, caps,
  counts, tool versions, code version, creation time.
"""

from __future__ import annotations

import ast
import bz2
import datetime as dt
import gzip
import hashlib
import inspect
import json
import lzma
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import pretrainlab
from pretrainlab.config import ProjectConfig, config_to_dict
from pretrainlab.fsio import atomic_open, atomic_write_json, atomic_write_text, sha256_file
from pretrainlab.progress import progress_bar

MAX_DOC_BYTES = 262_144  # one input larger than this is skipped ("too_large")
RENDER_WORKERS = 2
RENDER_TIMEOUT_S = 30
GROFF_CMD = ["groff", "-k", "-mandoc", "-t", "-Tutf8", "-P-cbou", "-rLL=78n", "-rLT=78n"]
PROSE_QUALITY_STAGES = ("gopher_quality", "gopher_repetition", "c4_lines", "fineweb_quality")
APPROVED_BY = "pretrainlab corpus build"


@dataclass(frozen=True)
class Cap:
    """Stop taking documents from a source once either limit is reached (None = no limit)."""

    max_docs: int | None
    max_bytes: int | None

    def reached(self, docs: int, nbytes: int) -> bool:
        return (self.max_docs is not None and docs >= self.max_docs) or (
            self.max_bytes is not None and nbytes >= self.max_bytes
        )


_SMALL = {
    "stdlib_code": Cap(400, 2_000_000),
    "stdlib_docstrings": Cap(500, 1_000_000),
    "man_pages": Cap(500, 1_250_000),
    "share_doc": Cap(400, 750_000),
}
SIZE_CAPS: dict[str, dict[str, Cap]] = {
    "small": _SMALL,
    "medium": {k: Cap(c.max_docs * 4, c.max_bytes * 4) for k, c in _SMALL.items()},  # type: ignore[operator]
    "large": {k: Cap(None, None) for k in _SMALL},
}


def caps_for(cfg: ProjectConfig) -> dict[str, Cap]:
    caps = dict(SIZE_CAPS[cfg.corpus.size])
    if cfg.corpus.max_docs_per_source is not None:
        caps = {k: Cap(cfg.corpus.max_docs_per_source, c.max_bytes) for k, c in caps.items()}
    return caps


def default_roots() -> dict[str, Path]:
    """Where each source's files live on this machine (override per call for tests)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return {
        "stdlib_code": stdlib,
        "stdlib_docstrings": stdlib,
        "man_pages": Path("/usr/share/man"),
        "share_doc": Path("/usr/share/doc"),
    }


# --------------------------------------------------------------------------- helpers


@dataclass
class SourceResult:
    docs: int = 0
    bytes: int = 0
    skipped: Counter = field(default_factory=Counter)
    inputs: list[dict] = field(default_factory=list)


@dataclass
class Item:
    """One candidate file turned into a record (or skipped with a reason)."""

    record: dict | None
    input: dict | None = None  # {"path", "sha256", "bytes"} of what was read
    skip: str | None = None


def _input_info(path: Path, raw: bytes) -> dict:
    return {"path": str(path), "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}


def _decompress(path: Path, raw: bytes) -> bytes:
    suffix = path.suffix
    if suffix == ".gz":
        return gzip.decompress(raw)
    if suffix == ".bz2":
        return bz2.decompress(raw)
    if suffix in (".xz", ".lzma"):
        return lzma.decompress(raw)
    return raw


def _strip_compression(name: str) -> str:
    for ext in (".gz", ".bz2", ".xz", ".lzma"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _record(source: str, rel: str, text: str, meta: dict) -> dict:
    return {"id": f"{source}:{rel}", "text": text, "source": source, "meta": meta}


# --------------------------------------------------------------------------- stdlib

EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def stdlib_files(root: Path) -> list[Path]:
    """Standard-library ``.py`` files under ``root``, tests and third-party packages excluded."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS and not d.startswith("config-"))
        for name in filenames:
            if name.endswith(".py") and not name.startswith("test_"):
                out.append(Path(dirpath) / name)
    return sorted(out)


def _read_small(path: Path) -> tuple[bytes | None, str | None]:
    try:
        if path.stat().st_size > MAX_DOC_BYTES:
            return None, "too_large"
        return path.read_bytes(), None
    except OSError:
        return None, "unreadable"


def _text_or_skip(data: bytes) -> tuple[str | None, str | None]:
    """Decode a file's bytes as UTF-8 text: (text, None), or (None, skip reason)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "non_utf8"
    return (text, None) if text.strip() else (None, "empty")


def stdlib_code_items(paths: list[Path], root: Path) -> Iterator[Item]:
    for path in paths:
        raw, why = _read_small(path)
        if raw is None:
            yield Item(None, skip=why)
            continue
        text, why = _text_or_skip(raw)
        if text is None:
            yield Item(None, skip=why)
            continue
        rel = path.relative_to(root).as_posix()
        yield Item(_record("stdlib_code", rel, text, {"path": str(path), "module": module_name(rel)}), _input_info(path, raw))


def module_name(rel: str) -> str:
    name = rel[:-3] if rel.endswith(".py") else rel
    name = name.replace("/", ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def module_docstrings(source: str, modname: str) -> list[tuple[str, str]]:
    """(qualified name, cleaned docstring) for the module and every class/function in it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = ast.parse(source)
    out: list[tuple[str, str]] = []

    def visit(node: ast.AST, qual: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{qual}.{child.name}"
                doc = ast.get_docstring(child, clean=False)
                if doc and doc.strip():
                    out.append((name, inspect.cleandoc(doc)))
                visit(child, name)
            elif isinstance(child, ast.stmt):
                visit(child, qual)  # defs nested in if/try/with blocks

    doc = ast.get_docstring(tree, clean=False) if isinstance(tree, ast.Module) else None
    if doc and doc.strip():
        out.append((modname, inspect.cleandoc(doc)))
    visit(tree, modname)
    return out


def stdlib_docstring_items(paths: list[Path], root: Path) -> Iterator[Item]:
    for path in paths:
        raw, why = _read_small(path)
        if raw is None:
            yield Item(None, skip=why)
            continue
        rel = path.relative_to(root).as_posix()
        modname = module_name(rel)
        try:
            docs = module_docstrings(raw.decode("utf-8"), modname)
        except (UnicodeDecodeError, SyntaxError, ValueError):
            yield Item(None, skip="unparsable")
            continue
        if not docs:
            yield Item(None, skip="no_docstrings")
            continue
        text = "\n\n".join(f"{name}\n{doc}" for name, doc in docs) + "\n"
        meta = {"path": str(path), "module": modname, "docstrings": len(docs)}
        yield Item(_record("stdlib_docstrings", rel, text, meta), _input_info(path, raw))


# --------------------------------------------------------------------------- man pages

MAN_SECTIONS = tuple(f"man{i}" for i in range(1, 9))


def man_files(root: Path) -> list[Path]:
    """English man pages: regular files directly in ``root/man1..man8`` (no locale dirs, no symlinks)."""
    out: list[Path] = []
    for sec in MAN_SECTIONS:
        d = root / sec
        if not d.is_dir():
            continue
        with os.scandir(d) as it:
            for entry in it:
                if entry.is_file(follow_symlinks=False):
                    out.append(Path(entry.path))
    return sorted(out)


def man_family(path: Path) -> str:
    """Command family of a page: ``gcloud_beta_foo.1.gz`` -> ``gcloud`` (16,631 of 19,778 pages here)."""
    return path.name.split("_", 1)[0].split(".", 1)[0]


def render_man_page(path: Path, root: Path) -> Item:
    try:
        raw = path.read_bytes()
        data = _decompress(path, raw)
    except (OSError, EOFError, gzip.BadGzipFile, lzma.LZMAError, ValueError):
        return Item(None, skip="unreadable")
    if data.lstrip().startswith(b".so "):
        return Item(None, skip="alias")
    if len(data) > MAX_DOC_BYTES:
        return Item(None, skip="too_large")
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    try:
        proc = subprocess.run(GROFF_CMD, input=data, capture_output=True, timeout=RENDER_TIMEOUT_S, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return Item(None, skip="render_failed")
    try:
        text = proc.stdout.decode("utf-8")
    except UnicodeDecodeError:
        return Item(None, skip="render_failed")
    if proc.returncode != 0 or not text.strip():
        return Item(None, skip="render_failed")
    rel = path.relative_to(root).as_posix()
    rel = _strip_compression(rel)
    meta = {"path": str(path), "section": path.parent.name.removeprefix("man")}
    return Item(_record("man_pages", rel, text, meta), _input_info(path, raw))


def man_page_items(paths: list[Path], root: Path) -> Iterator[Item]:
    """Render pages on a thread pool, yielding in input order (deterministic under caps)."""
    ex = ThreadPoolExecutor(RENDER_WORKERS, thread_name_prefix="groff")
    pending: deque = deque()
    try:
        for path in paths:
            pending.append(ex.submit(render_man_page, path, root))
            if len(pending) >= 4 * RENDER_WORKERS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- /usr/share/doc


def share_doc_files(root: Path) -> list[Path]:
    """``root/<package>/README*`` and ``root/<package>/copyright`` regular files."""
    out: list[Path] = []
    with os.scandir(root) as pkgs:
        for pkg in pkgs:
            if not pkg.is_dir():
                continue
            try:
                with os.scandir(pkg.path) as files:
                    for f in files:
                        if (f.name.startswith("README") or f.name == "copyright") and f.is_file():
                            out.append(Path(f.path))
            except OSError:
                continue
    return sorted(out)


def share_doc_items(paths: list[Path], root: Path) -> Iterator[Item]:
    seen: set[str] = set()
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:  # the same file reached through a symlinked package dir
            yield Item(None, skip="symlink_duplicate")
            continue
        seen.add(real)
        raw, why = _read_small(path)
        if raw is None:
            yield Item(None, skip=why)
            continue
        try:
            data = _decompress(path, raw)
        except (OSError, EOFError, lzma.LZMAError, ValueError):
            yield Item(None, skip="unreadable")
            continue
        if len(data) > MAX_DOC_BYTES:
            yield Item(None, skip="too_large")
            continue
        if b"\x00" in data:
            yield Item(None, skip="binary")
            continue
        text, why = _text_or_skip(data)
        if text is None:
            yield Item(None, skip=why)
            continue
        rel = _strip_compression(path.relative_to(root).as_posix())
        kind = "copyright" if path.name == "copyright" else "readme"
        meta = {"path": str(path), "package": path.parent.name, "kind": kind}
        yield Item(_record("share_doc", rel, text, meta), _input_info(path, raw))


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class EmbeddedSource:
    name: str
    description: str
    license: str
    languages: tuple[str, ...]
    candidates: Callable[[Path], list[Path]]
    items: Callable[[list[Path], Path], Iterator[Item]]
    needs: tuple[str, ...] = ()  # executables required
    family: Callable[[Path], str] | None = None  # groups sampled round-robin (see sample_order)

    def unavailable(self, root: Path) -> str | None:
        if not root.is_dir():
            return f"{root} not found on this machine"
        for exe in self.needs:
            if shutil.which(exe) is None:
                return f"'{exe}' is not installed (needed to render {self.name})"
        return None


SOURCES: dict[str, EmbeddedSource] = {
    s.name: s
    for s in (
        EmbeddedSource(
            "stdlib_code",
            "Python standard library source files (one document per .py file, tests excluded)",
            "PSF-2.0",
            ("python", "en"),
            stdlib_files,
            stdlib_code_items,
        ),
        EmbeddedSource(
            "stdlib_docstrings",
            "Docstrings of the Python standard library, one document per module, each headed by its qualified name",
            "PSF-2.0",
            ("en",),
            stdlib_files,
            stdlib_docstring_items,
        ),
        EmbeddedSource(
            "man_pages",
            "English manual pages (sections 1-8) rendered to plain text with groff",
            "various (see file)",
            ("en",),
            man_files,
            man_page_items,
            needs=("groff",),
            family=man_family,
        ),
        EmbeddedSource(
            "share_doc",
            "README and copyright files of installed packages from /usr/share/doc",
            "various (see file)",
            ("en",),
            share_doc_files,
            share_doc_items,
        ),
    )
}


def sample_order(paths: list[Path], seed: str, family: Callable[[Path], str] | None = None) -> list[Path]:
    """Deterministic sampling order: the sorted paths shuffled with ``random.Random(seed)``.

    With ``family``, families are interleaved round-robin (each family's first pick,
    then each family's second, ...), so one huge family (gcloud's thousands of
    templated man pages) cannot crowd a capped source; uncapped builds take all.
    """
    order = sorted(paths)
    random.Random(seed).shuffle(order)
    if family is None:
        return order
    seen: Counter = Counter()
    ranked = []
    for pos, path in enumerate(order):
        fam = family(path)
        ranked.append((seen[fam], pos, path))
        seen[fam] += 1
    return [p for _, _, p in sorted(ranked)]


def _note(msg: str) -> None:
    print(f"corpus build: {msg}", file=sys.stderr, flush=True)


def _build_source(src: EmbeddedSource, paths: list[Path], root: Path, cap: Cap, out: Path) -> SourceResult:
    res = SourceResult()
    total = len(paths) if cap.max_docs is None else min(len(paths), cap.max_docs)
    with atomic_open(out, "w") as fh, progress_bar(f"corpus {src.name}", total, unit="docs") as bar:
        items = src.items(paths, root)
        try:
            for item in items:
                if item.record is None:
                    res.skipped[item.skip or "skipped"] += 1
                    continue
                fh.write(json.dumps(item.record, ensure_ascii=False) + "\n")
                res.docs += 1
                res.bytes += len(item.record["text"].encode("utf-8"))
                if item.input:
                    res.inputs.append({"source": src.name, **item.input})
                bar.advance(1)
                if cap.reached(res.docs, res.bytes):
                    break
        finally:
            close = getattr(items, "close", None)
            if close:
                close()
    return res


def _groff_version() -> str | None:
    if shutil.which("groff") is None:
        return None
    try:
        out = subprocess.run(["groff", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0].strip() if out else None


def build_corpus(cfg: ProjectConfig, roots: dict[str, str | Path] | None = None) -> dict:
    """Build the embedded raw corpus into ``cfg.raw_dir``; returns a summary.

    ``roots`` overrides where a source's files are looked for (keys: source names),
    e.g. to point one at a missing directory in a test.
    """
    t0 = time.perf_counter()
    all_roots = {k: Path(v) for k, v in {**default_roots(), **(roots or {})}.items()}
    out_dir = cfg.raw_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    caps = caps_for(cfg)
    now = dt.datetime.now(dt.timezone.utc)

    registry: dict[str, dict] = {}
    per_source: dict[str, dict] = {}
    skipped_sources: dict[str, str] = {}
    inputs: list[dict] = []
    for name in cfg.corpus.sources:
        src, root, cap = SOURCES[name], all_roots[name], caps[name]
        ts = time.perf_counter()
        note = src.unavailable(root)
        paths = src.candidates(root) if note is None else []
        if note is None and not paths:
            note = f"no files found under {root}"
        if note is None:
            paths = sample_order(paths, f"{cfg.corpus.seed}:{name}", src.family)
            jsonl = out_dir / f"{name}.jsonl"
            res = _build_source(src, paths, root, cap, jsonl)
            if res.docs == 0:
                jsonl.unlink(missing_ok=True)
                note = f"no usable documents under {root} (skipped: {dict(res.skipped)})"
        if note is not None:
            _note(f"skipping source {name}: {note}")
            skipped_sources[name] = note
            continue
        inputs.extend(res.inputs)
        per_source[name] = {
            "docs": res.docs,
            "bytes": res.bytes,
            "mb": round(res.bytes / 1e6, 3),
            "candidates": len(paths),
            "skipped_files": dict(sorted(res.skipped.items())),
            "path": jsonl.name,
            "sha256": sha256_file(jsonl),
            "root": str(root),
            "seconds": round(time.perf_counter() - ts, 3),
        }
        registry[name] = {
            "path": jsonl.name,
            "format": "jsonl",
            "text_field": "text",
            "languages": list(src.languages),
            "license": src.license,
            "approval": {"status": "approved", "by": APPROVED_BY, "date": now.date().isoformat()},
            "modality": "text",
            "pii_policy": "keep",
            # The Gopher/C4/FineWeb rules are tuned for web prose; code, man pages and
            # READMEs fail them by design (symbols, short lines, no stop words).
            "skip_stages": list(PROSE_QUALITY_STAGES),
            "description": src.description,
        }

    header = (
        "# Source registry written by `pretrainlab corpus build`.\n"
        "# `data build` reads only the sources listed here and refuses any whose\n"
        "# approval.status is not 'approved'.\n"
    )
    atomic_write_text(out_dir / "sources.yaml", header + yaml.safe_dump({"sources": registry}, sort_keys=False, allow_unicode=True))

    seconds = round(time.perf_counter() - t0, 3)
    manifest = {
        "kind": "embedded_corpus",
        "created": now.isoformat(timespec="seconds"),
        "code_version": pretrainlab.__version__,
        "python": sys.version.split()[0],
        "tools": {"groff": _groff_version(), "groff_cmd": " ".join(GROFF_CMD)},
        "config": {**config_to_dict(cfg.corpus), "resolved_out": str(out_dir)},
        "caps": {k: {"max_docs": c.max_docs, "max_bytes": c.max_bytes} for k, c in caps.items()},
        "max_doc_bytes": MAX_DOC_BYTES,
        "sources": per_source,
        "skipped_sources": skipped_sources,
        "sources_yaml_sha256": sha256_file(out_dir / "sources.yaml"),
        "totals": {"docs": sum(s["docs"] for s in per_source.values()), "bytes": sum(s["bytes"] for s in per_source.values())},
        "inputs": inputs,
        "seconds": seconds,
    }
    atomic_write_json(out_dir / "manifest.json", manifest)
    return {
        "out": str(out_dir),
        "sources": {k: {"docs": v["docs"], "bytes": v["bytes"]} for k, v in per_source.items()},
        "skipped_sources": skipped_sources,
        "totals": manifest["totals"],
        "seconds": seconds,
    }

