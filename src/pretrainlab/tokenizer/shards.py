"""`data tokenize`: clean corpus -> per-source token shards with a document index.

Layout of ``cfg.tokens_dir`` (one folder per source, one token part per clean part:
``train-00000`` for ``<corpus>/<source>/train-00000.jsonl``; a corpus or multimodal
build without numbered parts gives the one-part names ``train``/``heldout``)::

    manifest.json               tokenizer hash (sha256 of its vocab_spec.json), dtype,
                                per-split counts and parts in order, totals, the corpus it
                                came from (absolute and relative to this folder: ``corpus_dir_of``)
    <source>/train-00000.bin    flat token array (uint16 if the spec's total vocabulary,
                                modality code ranges included, is <= 65536, else
                                uint32; native little-endian); every document's
                                tokens followed by eos_id
    <source>/train-00000.idx.npy  int64 [n_docs + 1] document start offsets into
                                the .bin; the last entry = total tokens
    <source>/train-00000.json   done record: input + tokenizer sha256, counts,
                                bin sha256 (a part counts only once it exists)
    <source>/heldout-00000.{bin,idx.npy,json}, train-00001.*, ...

Document ``i`` occupies ``bin[idx[i]:idx[i+1]]``, its last token being eos.

Each part is written to temporary files and renamed, and its done record is
written last, so a crash leaves either the old complete part or none. A re-run
re-tokenizes only parts whose input file or tokenizer changed; with nothing
changed it touches no file and reports "up to date".

Any tokenizer kind works (byte-level BPE or SentencePiece): encoding goes through
the text model's ``encode_batch``. ``check_tokenizer`` and ``ShardReader(...,
tokenizer_sha256=...)`` refuse shards made with another tokenizer.

Executor tasks (``tokenize.tasks``): with a large corpus or ``data.executor.kind``
slurm/ray, each part to (re)tokenize is one datatrove task on ``data.executor`` (work
folder ``<tokens>.work``; a re-run skips parts whose done record exists), otherwise the
parts run in this process. :class:`ShardReader` reads a split's parts as one array.

Parallelism in this process (``tokenize.backend``): ``processes`` feeds batches of raw JSONL
lines to ``tokenize.workers`` forked processes (spawn off Linux) (each parses JSON, encodes
single-threaded and returns a numpy chunk); ``threads`` encodes in this process
with the tokenizer library's thread pool (SentencePiece: its ``num_threads``, all cores). The main process streams chunks to the
``.bin`` file in document order, so memory stays bounded by the in-flight batches.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import pickle
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pretrainlab import __version__
from pretrainlab.config import ProjectConfig, config_to_dict
from pretrainlab.data.corpusfiles import split_parts
from pretrainlab.errors import DataError
from pretrainlab.fsio import atomic_open, atomic_write_bytes, atomic_write_json, read_json, remove_temporary_files, sha256_file
from pretrainlab.progress import console, progress_bar
from pretrainlab.tokenizer.train import corpus_manifest_sha256, find_corpus_sources
from pretrainlab.tokenizer.vocab import load_tokenizer, open_text_model, tokenizer_file

SPLITS = ("train", "heldout")
MANIFEST_FILE = "manifest.json"
FORMAT = "pretrainlab.tokens/1"
RETOKENIZE_HINT = "re-run `pretrainlab data tokenize`"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def part_paths(tokens_dir: str | Path, source: str, split: str) -> tuple[Path, Path, Path]:
    """(.bin, .idx.npy, .json done record) of one (source, split) part."""
    base = Path(tokens_dir) / source
    return base / f"{split}.bin", base / f"{split}.idx.npy", base / f"{split}.json"


# --------------------------------------------------------------------------- encoding


_WORKER_TOK = None


def _worker_init(tok_path: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process; the pool is the parallelism
    global _WORKER_TOK
    _WORKER_TOK = open_text_model(tok_path, threads=1)


def _encode_lines(lines: list[bytes], tok=None, eos_id: int = 2, dtype: str = "uint16") -> tuple[np.ndarray, np.ndarray, int]:
    """Raw JSONL lines -> (flat tokens with eos after each doc, per-doc lengths incl. eos, chars)."""
    tok = tok or _WORKER_TOK
    texts = []
    for line in lines:
        try:
            text = json.loads(line)["text"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            return np.empty(0, dtype), np.empty(0, np.int64), -1  # main process reports the bad line
        if not isinstance(text, str):
            return np.empty(0, dtype), np.empty(0, np.int64), -1
        texts.append(text)
    encs = tok.encode_batch(texts)
    lens = np.fromiter((len(e) + 1 for e in encs), dtype=np.int64, count=len(encs))
    out = np.empty(int(lens.sum()), dtype=dtype)
    pos = 0
    for e, n in zip(encs, lens.tolist()):
        out[pos : pos + n - 1] = e
        out[pos + n - 1] = eos_id
        pos += n
    return out, lens, sum(len(t) for t in texts)


def _encode_in_worker(lines: list[bytes], eos_id: int, dtype: str):
    return _encode_lines(lines, None, eos_id, dtype)


def _start_method() -> str:
    """fork on Linux: fast, and unlike spawn/forkserver it does not re-import the caller's
    ``__main__`` (a script without an ``if __name__ == "__main__"`` guard would recurse).
    The children only parse JSON and run a tokenizer they load themselves (no torch, no
    inherited thread pools), so forking a threaded parent is safe here. spawn elsewhere."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


class _Encoder:
    """Maps batches of lines to encoded chunks, in order, with a bounded number in flight."""

    def __init__(self, backend: str, workers: int, tok_path: Path, eos_id: int, dtype: np.dtype, threads: int | None = None):
        self.backend, self.workers, self.eos_id, self.dtype = backend, workers, eos_id, dtype.name
        self.threads = threads  # backend threads: None = the library's pool on all cores
        self._pool = None
        self._tok_path = tok_path
        self._tok = None

    def _ensure(self):
        if self.backend == "processes" and self._pool is None:
            ctx = mp.get_context(_start_method())
            self._pool = ctx.Pool(self.workers, initializer=_worker_init, initargs=(str(self._tok_path),))
        if self.backend == "threads" and self._tok is None:
            self._tok = open_text_model(self._tok_path, threads=self.threads)

    def map(self, batches: Iterator[list[bytes]]) -> Iterator[tuple[list[bytes], tuple]]:
        self._ensure()
        if self.backend == "threads":
            for b in batches:
                yield b, _encode_lines(b, self._tok, self.eos_id, self.dtype)
            return
        pending: deque = deque()
        limit = 2 * self.workers
        for b in batches:
            pending.append((b, self._pool.apply_async(_encode_in_worker, (b, self.eos_id, self.dtype))))
            if len(pending) >= limit:
                b0, res = pending.popleft()
                yield b0, res.get()
        while pending:
            b0, res = pending.popleft()
            yield b0, res.get()

    def close(self):
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None


def _read_batches(path: Path, batch_docs: int, hasher) -> Iterator[list[bytes]]:
    """Non-blank raw lines of a JSONL file in batches; feeds every byte read to ``hasher``."""
    batch: list[bytes] = []
    with open(path, "rb") as fh:
        for line in fh:
            hasher.update(line)
            if not line.strip():
                continue
            batch.append(line)
            if len(batch) >= batch_docs:
                yield batch
                batch = []
    if batch:
        yield batch


def _bad_line(path: Path, batch: list[bytes]) -> DataError:
    for line in batch:
        try:
            if isinstance(json.loads(line)["text"], str):
                continue
        except Exception:
            pass
        snippet = line[:60].decode("utf-8", "replace").strip()
        return DataError(
            f"{path}: record is not JSON with a string 'text' field ({snippet!r}...); re-run `pretrainlab data build`"
        )
    return DataError(f"{path}: unreadable record; re-run `pretrainlab data build`")


# --------------------------------------------------------------------------- one part


@dataclass(frozen=True)
class CleanPart:
    """One clean-corpus part to tokenize: ``name`` is its file stem (``train-00000``; ``train``
    for a corpus written before parts), ``path`` None when the split has no file (an empty part)."""

    source: str
    split: str
    name: str
    path: Path | None


def clean_parts(corpus_dir: Path, sources: list[str]) -> list[CleanPart]:
    out: list[CleanPart] = []
    for s in sources:
        for split in SPLITS:
            paths = split_parts(corpus_dir, s, split)
            out.extend(CleanPart(s, split, p.name.removesuffix(".jsonl"), p) for p in paths)
            if not paths:
                out.append(CleanPart(s, split, split, None))
    return out


def _part_up_to_date(tokens_dir: Path, part: CleanPart, input_sha: str, tok_sha: str, dtype: np.dtype) -> dict | None:
    bin_path, idx_path, rec_path = part_paths(tokens_dir, part.source, part.name)
    try:
        rec = read_json(rec_path)
    except (OSError, ValueError):
        return None
    if (
        rec.get("format") != FORMAT
        or rec.get("input_sha256") != input_sha
        or rec.get("tokenizer_sha256") != tok_sha
        or rec.get("dtype") != dtype.name
        or not idx_path.is_file()
        or not bin_path.is_file()
        or bin_path.stat().st_size != rec.get("tokens", -1) * dtype.itemsize
    ):
        return None
    return rec


class _NoBar:
    def advance(self, n) -> None:
        pass

    def set_total(self, n) -> None:
        pass


def _tokenize_part(
    part: CleanPart, tokens_dir: Path, encoder: _Encoder, batch_docs: int,
    tok_sha: str, dtype: np.dtype, bar, est: dict,
) -> dict:
    t0 = time.perf_counter()
    in_path = part.path
    bin_path, idx_path, rec_path = part_paths(tokens_dir, part.source, part.name)
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    rec_path.unlink(missing_ok=True)  # the part is invalid until its new record is written

    in_hash, bin_hash = hashlib.sha256(), hashlib.sha256()
    lengths: list[np.ndarray] = []
    tokens = chars = 0
    with atomic_open(idx_path, "wb") as fidx:
        with atomic_open(bin_path, "wb") as fbin:
            if in_path is not None and in_path.is_file():
                batches = _read_batches(in_path, batch_docs, in_hash)
                for batch, (arr, lens, n_chars) in encoder.map(batches):
                    if n_chars < 0:
                        raise _bad_line(in_path, batch)
                    view = memoryview(arr).cast("B")
                    fbin.write(view)
                    bin_hash.update(view)
                    lengths.append(lens)
                    tokens += arr.size
                    chars += n_chars
                    est["done_bytes"] += sum(len(b) for b in batch)
                    bar.advance(arr.size)
                    if est["done_bytes"]:
                        per_byte = (est["tokens"] + tokens) / est["done_bytes"]
                        bar.set_total(int(est["tokens"] + tokens + per_byte * (est["total_bytes"] - est["done_bytes"])))
        offsets = np.zeros(1 + sum(x.size for x in lengths), dtype=np.int64)
        if lengths:
            np.cumsum(np.concatenate(lengths), out=offsets[1:])
        np.save(fidx, offsets)
    est["tokens"] += tokens
    rec = {
        "format": FORMAT,
        "source": part.source,
        "split": part.split,
        "part": part.name,
        "input": str(in_path),
        "input_sha256": in_hash.hexdigest(),
        "tokenizer_sha256": tok_sha,
        "dtype": dtype.name,
        "docs": int(offsets.size - 1),
        "tokens": int(tokens),
        "chars": int(chars),
        "bin_sha256": bin_hash.hexdigest(),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    atomic_write_json(rec_path, rec)
    return rec


# --------------------------------------------------------------------------- one part per executor task


@dataclass
class TokenizePlan:
    """What the tokenize tasks need (pickled into their work folder; tasks may run on other machines)."""

    tok_path: Path
    tokens_dir: Path
    parts: list[CleanPart]  # task rank -> part
    batch_docs: int
    tok_sha: str
    eos_id: int
    dtype: str
    single_thread: bool  # local tasks share the machine: one encoder thread each


def tokenize_task(work_dir: Path, rank: int) -> dict:
    """Executor task: tokenize part ``rank`` of the plan (its done record marks it finished)."""
    with open(work_dir / "plan.pkl", "rb") as fh:
        plan: TokenizePlan = pickle.load(fh)
    if plan.single_thread:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    encoder = _Encoder("threads", 1, plan.tok_path, plan.eos_id, np.dtype(plan.dtype), threads=1 if plan.single_thread else None)
    est = {"total_bytes": 0, "done_bytes": 0, "tokens": 0}
    rec = _tokenize_part(plan.parts[rank], plan.tokens_dir, encoder, plan.batch_docs, plan.tok_sha,
                         np.dtype(plan.dtype), _NoBar(), est)
    return {"docs": rec["docs"], "tokens": rec["tokens"]}


def _use_tasks(cfg: ProjectConfig, todo: list[CleanPart]) -> bool:
    mode, ex = cfg.tokenize.tasks, cfg.data.executor
    if mode != "auto":
        return mode == "always"
    size = sum(p.path.stat().st_size for p in todo if p.path is not None and p.path.is_file())
    return ex.kind != "local" or (len(todo) > 1 and size >= ex.min_input_mb * 1e6)


def _run_tokenize_tasks(cfg: ProjectConfig, plan: TokenizePlan) -> None:
    """One datatrove task per part on data.executor; a re-run skips parts already done."""
    from pretrainlab.data import executor as dexec

    ex = cfg.data.executor
    dexec.check_executor(ex)
    basis = json.dumps([plan.tok_sha, [(p.source, p.name, str(p.path)) for p in plan.parts]])
    root = Path(str(plan.tokens_dir) + ".work")
    work_dir = root / f"plan-{hashlib.sha256(basis.encode()).hexdigest()[:16]}"
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(work_dir / "plan.pkl", pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL))
    task_mb = [(p.path.stat().st_size if p.path is not None and p.path.is_file() else 0) / 1e6 for p in plan.parts]
    if not dexec.execute(f"{__name__}:tokenize_task", ex, work_dir, task_mb, "tokenize tasks"):
        raise DataError(f"tokenize tasks were submitted to Slurm (data.executor.slurm.wait=false); when they are done, "
                        f"re-run `pretrainlab data tokenize` to write the manifest ({work_dir})")
    dexec.finish_work(root, work_dir, ex.keep_work)


# --------------------------------------------------------------------------- the stage


def _backend(cfg: ProjectConfig, kind: str) -> str:
    """auto: processes for byte-level BPE, threads for SentencePiece.

    Measured on 2 cores, alternating the two (benchmarks/bench_tokenizer.py, 2026-11-23):
    BPE on the embedded corpus (long man pages and source files) 1.44x faster with 2
    processes than with the library's thread pool, on 3,000-char stdlib documents equal
    (0.98x); SentencePiece encodes fast enough that the processes' pickling costs more
    than it saves (threads 1.6x faster for unigram).
    """
    b = cfg.tokenize.backend
    if b != "auto":
        return b
    return "processes" if kind == "bpe" else "threads"


def _remove_stale_parts(tokens_dir: Path, sources: list[str], parts: list[CleanPart]) -> None:
    """Token parts of the corpus' sources whose clean part is gone (the corpus was rebuilt with
    other parts): a reader must never see them."""
    keep = {(p.source, p.name) for p in parts}
    for folder in (tokens_dir / s for s in sources):
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            stem = f.name.split(".", 1)[0]
            if f.suffix in (".bin", ".json", ".npy") and _is_part_name(stem) and (folder.name, stem) not in keep:
                f.unlink()


def _is_part_name(stem: str) -> bool:
    split, _, num = stem.partition("-")
    return split in SPLITS and (num == "" or num.isdigit())


def tokenize_corpus(cfg: ProjectConfig) -> dict:
    """Tokenize every clean part that changed (one token part per clean part); returns the manifest plus run info."""
    t0 = time.perf_counter()
    tok_path = tokenizer_file(cfg.tokenize_tokenizer_dir)
    tok = load_tokenizer(tok_path)
    corpus_dir = Path(cfg.tokenize_corpus_dir)
    sources = find_corpus_sources(corpus_dir)
    tokens_dir = Path(cfg.tokens_dir)
    dtype = token_dtype(tok.vocab_size)
    for left in remove_temporary_files(tokens_dir):  # what a killed `data tokenize` left in its output
        console.print(f"removed {left} (left by an interrupted tokenize)")

    parts = clean_parts(corpus_dir, sources)
    _remove_stale_parts(tokens_dir, sources, parts)
    todo: list[CleanPart] = []
    records: dict[tuple[str, str], dict] = {}
    for part in parts:
        in_sha = sha256_file(part.path) if part.path is not None and part.path.is_file() else hashlib.sha256(b"").hexdigest()
        rec = _part_up_to_date(tokens_dir, part, in_sha, tok.sha256, dtype)
        if rec is None:
            todo.append(part)
        else:
            records[(part.source, part.name)] = rec

    workers = cfg.tokenize.workers
    backend = _backend(cfg, tok.kind)
    done_tokens = 0
    if todo and _use_tasks(cfg, todo):
        backend = f"{cfg.data.executor.kind} tasks"
        plan = TokenizePlan(tok_path, tokens_dir, todo, cfg.tokenize.batch_docs, tok.sha256, tok.eos_id, dtype.name,
                            single_thread=cfg.data.executor.kind == "local")
        _run_tokenize_tasks(cfg, plan)
        for part in todo:
            rec = read_json(part_paths(tokens_dir, part.source, part.name)[2])
            records[(part.source, part.name)] = rec
            done_tokens += rec["tokens"]
    elif todo:
        encoder = _Encoder(backend, workers, tok_path, tok.eos_id, dtype)
        total_bytes = sum(p.path.stat().st_size for p in todo if p.path is not None and p.path.is_file())
        est = {"total_bytes": total_bytes, "done_bytes": 0, "tokens": 0}
        try:
            how = "threads" if backend == "threads" else f"{workers} processes"
            with progress_bar(f"tokenize ({len(todo)} parts, {how})", None, unit="tokens") as bar:
                for part in todo:
                    records[(part.source, part.name)] = _tokenize_part(
                        part, tokens_dir, encoder, cfg.tokenize.batch_docs, tok.sha256, dtype, bar, est
                    )
        finally:
            encoder.close()
        done_tokens = est["tokens"]
    seconds = time.perf_counter() - t0

    splits = {s: {split: [records[(p.source, p.name)] for p in parts if p.source == s and p.split == split]
                  for split in SPLITS} for s in sources}
    totals = {split: {k: sum(r[k] for s in sources for r in splits[s][split]) for k in ("docs", "tokens", "chars")}
              for split in SPLITS}
    totals["all"] = {k: sum(totals[sp][k] for sp in SPLITS) for k in ("docs", "tokens", "chars")}
    retokenized = [f"{p.source}/{p.name}" for p in todo]
    content = {
        "format": FORMAT,
        "tokenizer_sha256": tok.sha256,
        "tokenizer_dir": str(tok_path.parent.resolve()),
        "tokenizer_kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "text_vocab_size": tok.text_vocab_size,
        "eos_id": tok.eos_id,
        "bos_id": tok.bos_id,
        "pad_id": tok.pad_id,
        "dtype": dtype.name,
        "eos_appended": True,
        "sources": {s: {split: split_summary(splits[s][split]) for split in SPLITS} for s in sources},
        "totals": totals,
        # Absolute, and relative to this manifest's folder: never relative to the cwd (see corpus_dir_of).
        "corpus_dir": str(corpus_dir.resolve()),
        "corpus_dir_relative": _relative_to(corpus_dir, tokens_dir),
        "corpus_manifest_sha256": corpus_manifest_sha256(corpus_dir),
        "config": config_to_dict(cfg.tokenize),
    }
    man_path = tokens_dir / MANIFEST_FILE
    try:
        old = read_json(man_path)
    except (OSError, ValueError):
        old = None
    unchanged = old is not None and all(old.get(k) == v for k, v in content.items())
    if todo or not unchanged:
        manifest = {
            **content,
            "backend": backend,
            "workers": workers,
            "retokenized": retokenized,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(done_tokens / seconds) if seconds > 0 else None,
            "code_version": __version__,
        }
        atomic_write_json(man_path, manifest)
    else:
        manifest = old
    status = "tokenized" if todo else "up to date"
    if not todo:
        console.print(f"tokenize: up to date ({totals['all']['tokens']:,} tokens in {tokens_dir})")
    return {
        **manifest,
        "status": status,
        "retokenized": retokenized,
        "run_seconds": round(seconds, 3),
        "run_tokens": done_tokens,
        "run_tokens_per_s": round(done_tokens / seconds) if todo and seconds > 0 else None,
    }


def split_summary(recs: list[dict]) -> dict:
    """A split's counts and its parts in order; ``bin_sha256``/``input_sha256`` are the part's own
    for a one-part split, else the sha256 of the parts' hashes one per line."""

    def joined(key: str) -> str:
        if len(recs) == 1:
            return recs[0][key]
        return hashlib.sha256("\n".join(r[key] for r in recs).encode()).hexdigest()

    return {
        "docs": sum(r["docs"] for r in recs),
        "tokens": sum(r["tokens"] for r in recs),
        "chars": sum(r["chars"] for r in recs),
        "bin_sha256": joined("bin_sha256"),
        "input_sha256": joined("input_sha256"),
        "parts": [r.get("part", r["split"]) for r in recs],
    }


# --------------------------------------------------------------------------- reading


def _relative_to(path: Path, start: Path) -> str | None:
    try:
        return os.path.relpath(Path(path).resolve(), Path(start).resolve())
    except ValueError:  # another drive (Windows): no relative path exists
        return None


def corpus_dir_of(tokens_dir: str | Path, manifest: dict | None = None, also: tuple[Path, ...] = ()) -> Path | None:
    """The clean corpus a shard folder was made from, whatever the current directory; None if it is gone.

    Candidates, in order: ``corpus_dir_relative`` joined to the manifest's own folder
    (survives moving tokens and corpus together), the absolute ``corpus_dir``, then
    ``also``. When the manifest recorded the corpus manifest's hash, a candidate counts
    only if its ``manifest.json`` has that hash, so another corpus at the same place is
    never taken for this one; a cwd-relative ``corpus_dir`` (manifests before this
    rule) is tried only under that check.
    """
    tokens_dir = Path(tokens_dir)
    m = manifest if manifest is not None else read_tokens_manifest(tokens_dir)
    want = m.get("corpus_manifest_sha256")
    rel, recorded = m.get("corpus_dir_relative"), m.get("corpus_dir")
    candidates = [tokens_dir / rel] if rel else []
    if recorded and (Path(recorded).is_absolute() or want):
        candidates.append(Path(recorded))
    for cand in [*candidates, *also]:
        if want is None and cand.is_dir():
            return cand
        if want is not None and corpus_manifest_sha256(cand) == want:
            return cand
    return None


def read_tokens_manifest(tokens_dir: str | Path) -> dict:
    path = Path(tokens_dir) / MANIFEST_FILE
    if not path.is_file():
        raise DataError(f"token shards not found: {path} is missing; run `pretrainlab data tokenize` first")
    try:
        return read_json(path)
    except (OSError, ValueError):
        raise DataError(f"{path} is unreadable; {RETOKENIZE_HINT}") from None


def check_tokenizer(tokens_dir: str | Path, tokenizer) -> dict:
    """The shard manifest, once it is clear the shards were made with ``tokenizer`` (a TextTokenizer or its hash)."""
    manifest = read_tokens_manifest(tokens_dir)
    want = tokenizer if isinstance(tokenizer, str) else tokenizer.sha256
    have = manifest.get("tokenizer_sha256")
    if have != want:
        where = "" if isinstance(tokenizer, str) else f" at {tokenizer.dir}"
        raise DataError(
            f"{tokens_dir} was tokenized with tokenizer {str(have)[:12]}, not with the tokenizer{where} ({want[:12]}); "
            f"{RETOKENIZE_HINT} with this tokenizer, or use the tokenizer the shards were made with"
        )
    return manifest


def list_sources(tokens_dir: str | Path) -> list[str]:
    """Sources of a token shard directory, from its manifest (sorted)."""
    return sorted(read_tokens_manifest(tokens_dir)["sources"])


class _OnePart:
    """One memory-mapped token part: ``.bin`` + ``.idx.npy`` + its done record, validated."""

    def __init__(self, tokens_dir: str | Path, source: str, name: str, tokenizer_sha256: str | None):
        self.bin_path, self.idx_path, rec_path = part_paths(tokens_dir, source, name)
        if not rec_path.is_file() or not self.bin_path.is_file() or not self.idx_path.is_file():
            raise DataError(
                f"token shard {self.bin_path.parent / name} missing or incomplete "
                f"(needs {name}.bin, {name}.idx.npy, {name}.json); run `pretrainlab data tokenize`"
            )
        try:
            self.record = read_json(rec_path)
            self.dtype = np.dtype(self.record["dtype"])
            self.index = np.load(self.idx_path, mmap_mode="r")
        except (OSError, ValueError, KeyError, TypeError):
            raise DataError(f"{rec_path.parent / name}: unreadable shard record or index; {RETOKENIZE_HINT}") from None
        if tokenizer_sha256 is not None and self.record.get("tokenizer_sha256") != tokenizer_sha256:
            raise DataError(
                f"{self.bin_path} was made with tokenizer {str(self.record.get('tokenizer_sha256'))[:12]}, "
                f"expected {tokenizer_sha256[:12]}; {RETOKENIZE_HINT} with the tokenizer you use"
            )
        size = self.bin_path.stat().st_size
        if (
            self.index.ndim != 1
            or self.index.size < 1
            or self.index.dtype != np.int64
            or size % self.dtype.itemsize
            or int(self.index[0]) != 0
            or int(self.index[-1]) * self.dtype.itemsize != size
        ):
            last = int(self.index[-1]) if self.index.ndim == 1 and self.index.size else None
            raise DataError(
                f"{self.bin_path}: corrupt shard ({size} bytes, index expects {last} {self.dtype.name} tokens); "
                f"{RETOKENIZE_HINT}"
            )
        # numpy cannot map an empty file
        self.data = np.memmap(self.bin_path, dtype=self.dtype, mode="r") if size else np.empty(0, dtype=self.dtype)


def part_names(tokens_dir: str | Path, source: str, split: str) -> list[str]:
    """The token parts of a (source, split), in order: from the manifest when it lists them, else
    the one-part layout (``<split>.bin``, multimodal shards and older folders), else the numbered parts on disk."""
    folder = Path(tokens_dir) / source
    try:
        listed = read_json(Path(tokens_dir) / MANIFEST_FILE)["sources"][source][split]["parts"]
        if isinstance(listed, list) and listed:
            return [str(n) for n in listed]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if (folder / f"{split}.json").is_file() or not folder.is_dir():
        return [split]
    numbered = sorted((f.name[: -len(".json")] for f in folder.glob(f"{split}-*.json")),
                      key=lambda n: int(n.rpartition("-")[2]) if n.rpartition("-")[2].isdigit() else -1)
    return numbered or [split]


class ShardReader:
    """Read-only, memory-mapped view of one (source, split): its parts, one after the other.

    ``doc(i)`` returns document ``i``'s tokens *without* its trailing eos
    (exactly ``tokenizer.encode(text)``); ``doc(i, with_eos=True)`` keeps it.
    ``tokens(start, end)`` reads any range of the split's flat array (all parts in order,
    eos included): a view inside one part, a copy across parts. ``index`` is the split's
    document start offsets (the part's own file for a one-part split; built once, 8 bytes
    per document, for several). Nothing else is loaded into RAM beyond the pages touched.
    With ``tokenizer_sha256`` every part must have been made with that tokenizer (else a DataError).
    """

    def __init__(self, tokens_dir: str | Path, source: str, split: str = "train", tokenizer_sha256: str | None = None):
        self._args = (tokens_dir, source, split, tokenizer_sha256)
        self.source, self.split = source, split
        self.parts = [_OnePart(tokens_dir, source, n, tokenizer_sha256) for n in part_names(tokens_dir, source, split)]
        first = self.parts[0]
        self.bin_path, self.idx_path, self.dtype = first.bin_path, first.idx_path, first.dtype
        if any(p.dtype != self.dtype for p in self.parts):
            raise DataError(f"{first.bin_path.parent}: the parts of {split} have different token types; {RETOKENIZE_HINT}")
        self.record = first.record if len(self.parts) == 1 else {
            "source": source, "split": split, "dtype": self.dtype.name, "parts": [p.record for p in self.parts],
            "tokenizer_sha256": first.record.get("tokenizer_sha256"),
        }
        self._tok_start = np.cumsum([0] + [p.data.size for p in self.parts])
        self._doc_start = np.cumsum([0] + [p.index.size - 1 for p in self.parts])
        self._index = first.index if len(self.parts) == 1 else None
        self._data = first.data if len(self.parts) == 1 else None

    @classmethod
    def from_prefix(cls, prefix: str | Path) -> "ShardReader":
        """Open ``<tokens_dir>/<source>/<split>`` given that path (with or without ``.bin``)."""
        prefix = Path(prefix)
        name = prefix.name.removesuffix(".bin").removesuffix(".idx.npy")
        return cls(prefix.parent.parent, prefix.parent.name, name)

    # Pickle as a reference, not as data (np.memmap would pickle the whole array): a
    # DataLoader worker or spawned process reopens and re-validates the files.
    def __getstate__(self) -> tuple:
        return self._args

    def __setstate__(self, args: tuple) -> None:
        self.__init__(*args)

    @property
    def index(self) -> np.ndarray:
        if self._index is None:
            pieces = [p.index[:-1] + off for p, off in zip(self.parts, self._tok_start)]
            self._index = np.concatenate([*pieces, np.array([self._tok_start[-1]], dtype=np.int64)]).astype(np.int64)
        return self._index

    @property
    def num_tokens(self) -> int:
        return int(self._tok_start[-1])

    @property
    def num_docs(self) -> int:
        return int(self._doc_start[-1])

    def __len__(self) -> int:
        return self.num_docs

    def doc_bounds(self, i: int) -> tuple[int, int]:
        """[start, end) of document i in the flat array (end is after its eos)."""
        if not -self.num_docs <= i < self.num_docs:
            raise IndexError(f"document {i} out of range for {self.num_docs} documents")
        i %= self.num_docs
        k = int(np.searchsorted(self._doc_start, i, side="right")) - 1
        part, local, off = self.parts[k], i - int(self._doc_start[k]), int(self._tok_start[k])
        return off + int(part.index[local]), off + int(part.index[local + 1])

    def doc(self, i: int, with_eos: bool = False) -> np.ndarray:
        start, end = self.doc_bounds(i)
        return self.tokens(start, end if with_eos else end - 1)

    def tokens(self, start: int, end: int) -> np.ndarray:
        """Tokens [start, end) of the flat array (a memory-mapped view within a part; copy it to keep it)."""
        if not 0 <= start <= end <= self.num_tokens:
            raise IndexError(f"token range [{start}, {end}) outside [0, {self.num_tokens})")
        if self._data is not None:
            return self._data[start:end]
        k = int(np.searchsorted(self._tok_start, start, side="right")) - 1
        k = min(k, len(self.parts) - 1)
        off = int(self._tok_start[k])
        if end <= int(self._tok_start[k + 1]):
            return self.parts[k].data[start - off:end - off]
        out, pos = [], start
        while pos < end:
            k = int(np.searchsorted(self._tok_start, pos, side="right")) - 1
            off, stop = int(self._tok_start[k]), min(end, int(self._tok_start[k + 1]))
            out.append(self.parts[k].data[pos - off:stop - off])
            pos = stop
        return np.concatenate(out)

    def __repr__(self) -> str:
        return (f"ShardReader({self.source}/{self.split}: {self.num_docs} docs, {self.num_tokens} {self.dtype.name} tokens"
                f"{f', {len(self.parts)} parts' if len(self.parts) > 1 else ''})")
