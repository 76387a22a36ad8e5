"""`pretrainlab data build`: approved raw sources -> clean, deduplicated, split corpus.

Reads ``<data input>/sources.yaml`` and streams each listed JSONL file line by
line through the stages named in ``data.stages`` (see :mod:`.stages`), so memory
stays constant apart from the state a stage keeps (exact dedup: one digest per
unique document). Sources run in registry order, so "first occurrence wins" in
dedup follows that order.

With enough input (``data.executor``), the whole build runs as phases of datatrove tasks
(:mod:`.executor`): the stateless stages and dedup signatures per unit run, exact and near
dedup over bucket shards (:mod:`.dedupdist`), then :func:`filter_task` per unit run writes
the parts; this module gathers the pieces (:func:`_collect_filtered`). Same outputs.

Outputs in ``cfg.clean_dir``:

- ``<source>/train-NNNNN.jsonl`` and ``<source>/heldout-NNNNN.jsonl``: ``{"id", "text",
  "source", "meta"}`` per line; one pair of parts per work unit of the source (a file, a
  run of small files, or a ``data.executor.unit_mb`` byte range of a large JSONL file), so
  the parts are the same whatever the executor, task or worker count
  (:mod:`.corpusfiles` lists them; the manifest's ``parts`` too). A document is held out iff
  ``int(sha256(text)[:8], 16) / 16**8 < data.heldout_fraction`` -- the same text
  lands in the same split in every build. If that holds out nothing in a source
  with at least 2 output documents (tiny sources) and the fraction is > 0, the
  train document with the smallest hash value is moved to held-out, so every
  source can be evaluated; that choice is deterministic too (it depends only on
  the source's set of output texts).
- ``quarantine.jsonl``: every removed document or bad line: ``{"id", "source",
  "stage", "code", "reason", "chars", "line", "preview"}`` (``stage`` is ``read``
  for lines that are not valid records; ``line`` is set only for those).
- ``stats.json``: per source and per stage docs/chars in and out, removals by
  code, seconds per stage.
- ``manifest.json``: input files and sources.yaml with sha256, each source's
  license and approval, the ``data`` config, code version, output files with
  sha256 and counts, and ``manifest_id`` (hash of inputs + config).

Durability: everything is written into a fresh temporary sibling directory which
replaces ``clean_dir`` only after the manifest (written last) is in place; a
crash at any point leaves the previous clean corpus untouched. Readers should
still require ``manifest.json``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

import pretrainlab
from pretrainlab.config import ProjectConfig, config_to_dict
from pretrainlab.data.gate import Admission, check_sources
from pretrainlab.data.corpusfiles import SPLITS, part_name
from pretrainlab.data.readers import compression, read_source
from pretrainlab.data.sources import PREVIEW_CHARS, BadRecord, SourceSpec, load_registry, scan_file
from pretrainlab.data import executor as dexec
from pretrainlab.data.dedupdist import Decided, dedup_rounds, doc_offsets, exact_extras, load_drops, near_extras
from pretrainlab.data.parallel import Trace, prefix_length
from pretrainlab.data.stages import STAGES, Document, Reject, Stage, build_stages
from pretrainlab.errors import DataError
from pretrainlab.fsio import atomic_open, atomic_write_bytes, atomic_write_json, remove_stale_temporaries, replace_dir, sha256_file
from pretrainlab.progress import console, progress_bar

MANIFEST_KIND = "clean_corpus"
EXIT_RECORDS_LOST = 3  # `data build` finished, but some input records were unreadable (see quarantine)


def code_fingerprint() -> str:
    """Hash of the package version and the data pipeline's source files: part of the dataset id,
    so a code change (even uncommitted) yields a new dataset."""
    h = hashlib.sha256(pretrainlab.__version__.encode())
    pkg = Path(__file__).resolve().parent
    shared = [p for p in (pkg.parent / "config.py", pkg.parent / "configsection.py") if p.is_file()]
    for path in sorted([*pkg.glob("*.py"), *shared]):  # data/config.py holds the data options
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def next_version(previous: str | None) -> str:
    """dataset-v0.1, then dataset-v0.2, ... each time the content id changes."""
    if previous and previous.startswith("dataset-v0."):
        try:
            return f"dataset-v0.{int(previous.rsplit('.', 1)[1]) + 1}"
        except ValueError:
            pass
    return "dataset-v0.1"


def heldout_value(text: str) -> float:
    """Position of a text in [0, 1) used for the held-out split (first 32 bits of sha256)."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) / 16**8


@dataclass
class Counts:
    docs_in: int = 0
    docs_out: int = 0
    chars_in: int = 0
    chars_out: int = 0
    removed: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    skipped: int = 0  # documents of sources that bypass this stage (skip_stages)

    def add(self, other: Counts) -> None:
        """Add the counts of another piece of the same stage (or source)."""
        self.docs_in += other.docs_in
        self.docs_out += other.docs_out
        self.chars_in += other.chars_in
        self.chars_out += other.chars_out
        self.removed.update(other.removed)
        self.seconds += other.seconds
        self.skipped += other.skipped

    def as_dict(self) -> dict:
        return {
            "docs_skipped": self.skipped,
            "docs_in": self.docs_in,
            "docs_out": self.docs_out,
            "chars_in": self.chars_in,
            "chars_out": self.chars_out,
            "removed": dict(sorted(self.removed.items())),
            "seconds": round(self.seconds, 4),
        }


@dataclass
class SourceCounts(Counts):
    bad_records: int = 0
    train_docs: int = 0
    heldout_docs: int = 0
    heldout_fallback: bool = False
    removed_by_stage: Counter = field(default_factory=Counter)

    def add(self, other: SourceCounts) -> None:
        super().add(other)
        self.bad_records += other.bad_records
        self.train_docs += other.train_docs
        self.heldout_docs += other.heldout_docs
        self.removed_by_stage.update(other.removed_by_stage)

    def as_dict(self) -> dict:
        d = super().as_dict()
        d.pop("seconds")
        d.update(
            bad_records=self.bad_records,
            train_docs=self.train_docs,
            heldout_docs=self.heldout_docs,
            heldout_fallback=self.heldout_fallback,
            removed_by_stage=dict(sorted(self.removed_by_stage.items())),
        )
        return d


def _config_for_id(cfg: ProjectConfig) -> dict:
    d = config_to_dict(cfg.data)
    for key in ("input", "out", "executor"):  # where and how fast, not what: same data, same id
        d.pop(key, None)
    return d


def _check_output_dir(out_dir: Path, in_dir: Path) -> None:
    out_r, in_r = out_dir.resolve(), in_dir.resolve()
    if out_r == in_r or out_r in in_r.parents:
        raise DataError(f"data.out ({out_dir}) must not be or contain the input directory ({in_dir}); choose another data.out")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DataError(f"data.out ({out_dir}) is a file; choose a directory path for data.out")
        if any(out_dir.iterdir()):
            try:
                kind = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8")).get("kind")
            except (OSError, ValueError, AttributeError):
                kind = None
            if kind != MANIFEST_KIND:
                raise DataError(
                    f"refusing to replace {out_dir}: it is not empty and not a clean corpus written by `data build`; "
                    "choose a new or empty data.out"
                )


class _Run:
    """State of one build: stages, counters, the quarantine writer."""

    def __init__(self, stages: list[Stage], quarantine, units: list[dexec.Unit], parts: dexec.Parts | None = None) -> None:
        self.stages = stages
        self.units = units  # work units in read order; one output part each
        self.by_name = {s.name: s for s in stages}
        self.quarantine = quarantine
        self.stage_counts: dict[str, Counts] = {"read": Counts(), **{s.name: Counts() for s in stages}}
        self.quarantined = 0
        self.seq = 0  # documents read so far (Document.seq)
        self.parts = parts  # records from executor tasks (None: read and run everything here)
        self.prefix = prefix_length(stages) if parts is not None else 0

    def _quarantine(self, doc_id: str, source: str, stage: str, code: str, reason: str, text: str | None,
                    line: int | None = None, chars: int | None = None) -> None:
        rec = {
            "id": doc_id,
            "source": source,
            "stage": stage,
            "code": code,
            "reason": reason,
            "chars": chars if chars is not None else (len(text) if text is not None else None),
            "line": line,
            "preview": (text or "")[:PREVIEW_CHARS],
        }
        self.quarantine.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self.quarantined += 1

    def read_bad(self, bad: BadRecord, spec: SourceSpec, src: SourceCounts) -> None:
        read = self.stage_counts["read"]
        read.docs_in += 1
        read.removed[bad.code] += 1
        src.docs_in += 1
        src.bad_records += 1
        src.removed[bad.code] += 1
        src.removed_by_stage["read"] += 1
        self._quarantine(bad.id, spec.name, "read", bad.code, bad.reason, bad.preview, line=bad.line)

    def _replay(self, doc: Document, trace: Trace, src: SourceCounts) -> Document | None:
        """Count what the worker-side stages did to ``doc`` exactly as :meth:`run` would have."""
        for step in trace.steps:
            c = self.stage_counts[step.stage]
            if step.skipped:
                c.skipped += 1
                continue
            c.docs_in += 1
            c.chars_in += step.chars_in
            c.seconds += step.seconds
            if step.note is not None:
                self.by_name[step.stage].account(doc.seq, step.note)
            if step.code is not None:
                c.removed[step.code] += 1
                src.removed[step.code] += 1
                src.removed_by_stage[step.stage] += 1
                self._quarantine(doc.id, doc.source, step.stage, step.code, step.reason, step.preview, chars=step.chars_in)
                return None
            c.docs_out += 1
            c.chars_out += step.chars_out
        return trace.doc

    def run(self, doc: Document, src: SourceCounts, skip: frozenset = frozenset(), trace: Trace | None = None) -> Document | None:
        """Count ``doc`` as read and pass it through the stages (those after the worker-side
        prefix when ``trace`` holds what the workers did)."""
        read = self.stage_counts["read"]
        n = len(doc.text) if trace is None else trace.chars_read
        read.docs_in += 1
        read.docs_out += 1
        read.chars_in += n
        read.chars_out += n
        src.docs_in += 1
        src.chars_in += n
        stages = self.stages
        if trace is not None:
            doc = self._replay(doc, trace, src)
            if doc is None:
                return None
            stages = self.stages[self.prefix:]
        for stage in stages:
            c = self.stage_counts[stage.name]
            if stage.name in skip:
                c.skipped += 1
                continue
            c.docs_in += 1
            c.chars_in += len(doc.text)
            text_in = doc.text  # a stage may change the document before rejecting it (c4_lines)
            t = time.perf_counter()
            result = stage.process(doc)
            c.seconds += time.perf_counter() - t
            if isinstance(result, Reject):
                c.removed[result.code] += 1
                src.removed[result.code] += 1
                src.removed_by_stage[stage.name] += 1
                self._quarantine(doc.id, doc.source, stage.name, result.code, result.reason, text_in)
                return None
            doc = result
            c.docs_out += 1
            c.chars_out += len(doc.text)
        src.docs_out += 1
        src.chars_out += len(doc.text)
        return doc


@dataclass
class _PartWriter:
    """The open train/heldout part files of one work unit, with their document counts."""

    index: int
    train: object
    held: object
    train_docs: int = 0
    heldout_docs: int = 0


def _process_source(spec: SourceSpec, run: _Run, out: Path, fraction: float, units: list[int],
                    lines: int | None = None, max_doc_bytes: int = 10_000_000) -> tuple[SourceCounts, list[dict]]:
    """Run the source's units (indices into ``run.units``, in read order) and write one
    train/heldout part pair per unit; returns the counts and each part's document counts."""
    src = SourceCounts()
    best: tuple[float, int, int] | None = None  # (heldout value, part, train line) closest to being held out
    parts: list[dict] = []
    with progress_bar(f"data {spec.name}", lines, unit="docs") as bar:
        for k, ui in enumerate(units or [None]):  # a source without input still gets (empty) part 0
            counts, b = _write_unit(spec, run, out, k, ui, fraction, src, max_doc_bytes, bar)
            parts.append(counts)
            best = b if best is None or (b is not None and b < best) else best
    _heldout_fallback(out, parts, src, best, fraction)
    return src, parts


def _write_unit(spec: SourceSpec, run: _Run, out: Path, k: int, ui: int | None, fraction: float, src: SourceCounts,
                max_doc_bytes: int, bar=None) -> tuple[dict, tuple[float, int, int] | None]:
    """Process work unit ``ui`` into part ``k`` of the source; returns the part's counts and its
    train document closest to being held out (value, part, line)."""
    out.mkdir(parents=True, exist_ok=True)
    best = None
    with ExitStack() as stack:
        w = _PartWriter(k, stack.enter_context(atomic_open(out / part_name("train", k), "w")),
                        stack.enter_context(atomic_open(out / part_name("heldout", k), "w")))
        for item, trace in _items(spec, run, ui, max_doc_bytes):
            if bar is not None:
                bar.advance(1)
            if isinstance(item, BadRecord):
                run.read_bad(item, spec, src)
                continue
            doc = run.run(item, src, frozenset(spec.skip_stages), trace)
            if doc is None:
                continue
            value = _write_doc(doc, w, fraction)
            if value is not None and (best is None or value < best[0]):
                best = (value, k, w.train_docs - 1)
    src.train_docs += w.train_docs
    src.heldout_docs += w.heldout_docs
    return {"train": w.train_docs, "heldout": w.heldout_docs}, best


def _heldout_fallback(out: Path, parts: list[dict], src: SourceCounts, best: tuple | None, fraction: float) -> str | None:
    """A source that held out nothing (tiny) gives its closest train document to held-out;
    returns the part number changed, if any."""
    if not (fraction > 0 and src.heldout_docs == 0 and src.train_docs >= 2 and best is not None):
        return None
    _, k, line = best
    _move_line(out / part_name("train", k), out / part_name("heldout", k), line)
    parts[k]["train"] -= 1
    parts[k]["heldout"] += 1
    src.train_docs -= 1
    src.heldout_docs += 1
    src.heldout_fallback = True
    return k


def _write_doc(doc: Document, w: _PartWriter, fraction: float) -> float | None:
    """Write ``doc`` to its split; returns its held-out value when it went to train."""
    line = json.dumps(doc.to_record(), ensure_ascii=False) + "\n"
    value = heldout_value(doc.text)
    if value < fraction:
        w.held.write(line)
        w.heldout_docs += 1
        return None
    w.train.write(line)
    w.train_docs += 1
    return value


def _items(spec: SourceSpec, run: _Run, ui: int | None, max_doc_bytes: int) -> Iterator[tuple[Document | BadRecord, Trace | None]]:
    """The records of work unit ``ui`` in read order, each Document numbered (``seq``) and, after
    executor tasks, paired with the trace of the stages the tasks ran."""
    if ui is None:
        return
    if run.parts is None:
        unit = run.units[ui]
        records = ((item, None) for item in read_source(spec, max_doc_bytes, list(unit.files), unit.byte_range))
    else:
        records = run.parts.of_unit(ui)
    for item, trace in records:
        if isinstance(item, Document):
            item.seq = run.seq
            run.seq += 1
        yield item, trace


def _move_line(train_path: Path, held_path: Path, index: int) -> None:
    """Move line ``index`` of a train part to its (empty) heldout part, streaming."""
    moved = None
    with open(train_path, "rb") as src, atomic_open(train_path, "wb") as dst:
        for i, line in enumerate(src):
            if i == index:
                moved = line
            else:
                dst.write(line)
    with atomic_open(held_path, "wb") as fh:
        fh.write(moved or b"")


def _removal_summary(counter: Counter) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counter.most_common()) or "-"


def _print_table(specs: list[SourceSpec], per_source: dict[str, SourceCounts], out_dir: Path, seconds: float) -> None:
    table = Table(title=f"clean corpus -> {out_dir} ({seconds:.1f}s)")
    table.add_column("source", no_wrap=True)
    for col, justify in [("docs in", "right"), ("removed (by reason)", "left"),
                         ("docs out", "right"), ("held out", "right"), ("MB out", "right")]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    tot = SourceCounts()
    for spec in specs:
        s = per_source[spec.name]
        table.add_row(spec.name, f"{s.docs_in:,}", _removal_summary(s.removed), f"{s.docs_out:,}",
                      f"{s.heldout_docs:,}", f"{s.chars_out / 1e6:.2f}")
        tot.docs_in += s.docs_in
        tot.docs_out += s.docs_out
        tot.heldout_docs += s.heldout_docs
        tot.chars_out += s.chars_out
        tot.removed.update(s.removed)
    table.add_row("total", f"{tot.docs_in:,}", _removal_summary(tot.removed), f"{tot.docs_out:,}",
                  f"{tot.heldout_docs:,}", f"{tot.chars_out / 1e6:.2f}", style="bold")
    console.print(table)


def _print_refusals(gate: Admission) -> None:
    """One line per refused source and per refused file an approved source matched too."""
    for name, why in gate.refused_sources.items():
        n = sum(name in f.matched_by for f in gate.refused_files)
        what = f"none of its {n} file(s) was opened" if n else "it names no existing file"
        console.print(f"[yellow]refused:[/] source {name} ({why}); {what}")
    for f in gate.refused_files:
        approved = [n for n in f.matched_by if n not in gate.refused_sources]
        if approved:
            console.print(f"[yellow]refused:[/] file {f.path} ({'; '.join(f.reasons)}), also matched by "
                          f"{', '.join(approved)}: left out, never opened as data")


def _check_skip_stages(specs: list[SourceSpec], registry: Path) -> None:
    known = set(STAGES)
    for spec in specs:
        for name in spec.skip_stages:
            if name not in known:
                raise DataError(f"{registry}: source '{spec.name}': field 'skip_stages' names unknown stage '{name}'; "
                                f"available: {', '.join(sorted(known))}")


def _scan_inputs(specs: list[SourceSpec], cut_bytes: int | None = None,
                 cuts: dict[tuple[str, int], list] | None = None) -> dict[str, dict]:
    """Content hash, size and (plain JSONL) line count of every input file, per source; with
    ``cut_bytes``, the line starts where plain JSONL files can be split go into ``cuts``."""
    inputs: dict[str, dict] = {}
    for spec in specs:
        files, h, total_bytes, lines, all_plain = [], hashlib.sha256(), 0, 0, spec.format.startswith("jsonl")
        for i, path in enumerate(spec.files):
            file_cuts: list = []
            try:
                plain = spec.format.startswith("jsonl") and compression(path) is None  # by content, not by name
                sha, n_lines, size = scan_file(path, cut_bytes if plain else None, file_cuts)
            except OSError as exc:
                raise DataError(f"source '{spec.name}': cannot read {path} ({exc.strerror or exc}); "
                                "fix its permissions or remove it from sources.yaml") from None
            all_plain = all_plain and plain
            if file_cuts and cuts is not None:
                cuts[(spec.name, i)] = file_cuts
            files.append({"path": str(path), "sha256": sha, "bytes": size})
            h.update(f"{path.name}\0{sha}\n".encode())
            total_bytes += size
            lines += n_lines
        single = len(files) == 1
        progress_total = lines if all_plain else (len(files) if spec.format == "text" else None)
        inputs[spec.name] = {
            "path": str(spec.path), "format": spec.format,
            "sha256": files[0]["sha256"] if single else h.hexdigest(), "bytes": total_bytes,
            "lines": lines if all_plain else None, "files": files, "progress_total": progress_total,
        }
    return inputs


def _up_to_date(out_dir: Path, manifest_id: str, unit_mb: float) -> dict | None:
    """The existing corpus' manifest when it was built from the same inputs, config and code, cut
    into the same parts (``unit_mb``: the same documents, another layout, keep the id), and is intact."""
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("kind") != MANIFEST_KIND or manifest.get("manifest_id") != manifest_id:
        return None
    if ((manifest.get("config") or {}).get("executor") or {}).get("unit_mb") != unit_mb or "parts" not in manifest:
        return None
    for rel, out in manifest.get("outputs", {}).items():
        p = out_dir / rel
        if not p.is_file() or p.stat().st_size != out.get("bytes"):
            return None
    return manifest


def _previous_version(out_dir: Path) -> str | None:
    try:
        return json.loads((out_dir / "manifest.json").read_text(encoding="utf-8")).get("dataset_version")
    except (OSError, ValueError, AttributeError):
        return None


def build_clean_corpus(cfg: ProjectConfig) -> dict:
    """Build the clean corpus into ``cfg.clean_dir``; returns a summary dict.

    A rebuild with unchanged inputs, config and code finds the same ``manifest_id``
    in ``clean_dir`` and does nothing (``summary["up_to_date"]`` is True)."""
    t0 = time.perf_counter()
    stages = build_stages(cfg.data)  # config mistakes first, before touching data
    in_dir, out_dir = Path(cfg.data_input_dir), Path(cfg.clean_dir)
    if not in_dir.is_dir():
        raise DataError(f"data input directory {in_dir} not found; run `pretrainlab corpus build` first (or set data.input)")
    registry = in_dir / "sources.yaml"
    if not registry.is_file():
        raise DataError(f"{registry} not found; run `pretrainlab corpus build` first (or point data.input at a folder with sources.yaml)")
    all_specs = load_registry(registry)
    _check_skip_stages(all_specs, registry)
    ex = cfg.data.executor
    dexec.check_executor(ex)
    never_data = {out_dir: "inside data.out (this build's output)",
                  dexec.work_root(ex, out_dir): "inside the data tasks' work folder (this build's output)"}
    gate = check_sources(all_specs, registry, cfg.data.unapproved, never_data)  # the compliance gate: before any read
    specs, refused = gate.sources, gate.refused_sources
    _print_refusals(gate)
    _check_output_dir(out_dir, in_dir)
    for left in remove_stale_temporaries(out_dir):  # what a killed `data build` left beside its output
        console.print(f"removed {left} (left by an interrupted build)")

    now = dt.datetime.now(dt.timezone.utc)
    registry_sha = sha256_file(registry)
    n_prefix = prefix_length(stages)
    sizes = {s.name: [p.stat().st_size for p in s.files] for s in specs}
    total_bytes = sum(map(sum, sizes.values()))
    # Executor tasks pay off when there is enough input (local) or were asked for (slurm/ray).
    use_executor = n_prefix > 0 and (ex.kind != "local" or total_bytes >= ex.min_input_mb * 1e6)
    unit_bytes = dexec.unit_target_bytes(ex)  # work units = output parts, in-process or not
    cuts: dict[tuple[str, int], list] = {}
    inputs = _scan_inputs(specs, unit_bytes, cuts)
    units = dexec.plan_units(specs, sizes, cuts, unit_bytes)
    code = code_fingerprint()
    id_basis = {
        "sources_yaml": registry_sha,
        "inputs": {k: v["sha256"] for k, v in sorted(inputs.items())},
        "config": _config_for_id(cfg),
        "code": code,
    }
    manifest_id = hashlib.sha256(json.dumps(id_basis, sort_keys=True).encode()).hexdigest()[:16]
    existing = _up_to_date(out_dir, manifest_id, ex.unit_mb)
    if existing is not None:
        console.print(f"clean corpus {out_dir} is up to date ({existing.get('dataset_version')}, id {manifest_id}); nothing to do")
        return {"out": str(out_dir), "manifest_id": manifest_id, "dataset_version": existing.get("dataset_version"),
                "up_to_date": True, "sources": {}, "totals": existing.get("counts", {}),
                "seconds": round(time.perf_counter() - t0, 3)}
    version = next_version(_previous_version(out_dir))
    for stage in stages:
        stage.bind({s.name: s for s in specs})

    work = plan = None
    if use_executor:
        names = [s.name for s in stages]
        rounds = dedup_rounds(names, {s.name for s in stages if s.stateful})
        plan = dexec.make_plan(cfg.data, names, n_prefix, rounds, specs, units)
        root = dexec.work_root(ex, out_dir)
        work = dexec.run_tasks(plan, ex, root, manifest_id)
        if work is None:  # a Slurm job was submitted; the merge happens on the next `data build`
            return {"out": str(out_dir), "manifest_id": manifest_id, "dataset_version": None, "up_to_date": False,
                    "submitted": True, "sources": {}, "totals": {}, "seconds": round(time.perf_counter() - t0, 3)}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the corpus dir should get normal permissions
    try:
        per_source: dict[str, SourceCounts] = {}
        part_counts: dict[str, list[dict]] = {}
        hashes: dict[str, dict] = {}  # part -> sha256 and bytes, when the filter tasks computed them
        if work is None:
            with atomic_open(tmp / "quarantine.jsonl", "w") as quarantine:
                run = _Run(stages, quarantine, units)
                for spec in specs:
                    mine = [i for i, u in enumerate(units) if u.source == spec.name]
                    per_source[spec.name], part_counts[spec.name] = _process_source(
                        spec, run, tmp / spec.name, cfg.data.heldout_fraction, mine, inputs[spec.name]["progress_total"],
                        cfg.data.max_doc_bytes,
                    )
            stage_extra = {s.name: s.finish() for s in stages}
        else:
            run, stage_extra = _collect_filtered(work, plan, stages, specs, tmp, per_source, part_counts, hashes)
        _check_conservation(per_source, run)

        docs_in = sum(s.docs_in for s in per_source.values())
        docs_out = sum(s.docs_out for s in per_source.values())
        if docs_out == 0:
            by_stage = Counter()
            for s in per_source.values():
                by_stage.update(s.removed_by_stage)
            detail = "; ".join(
                f"{name} removed {n:,} ({_removal_summary(run.stage_counts[name].removed)})" for name, n in by_stage.most_common()
            )
            raise DataError(
                f"every document was removed ({docs_in:,} read from {registry}): {detail or 'the sources are empty'}; "
                "check the input or relax the filters (data.min_chars, data.max_chars, data.stages)"
            )
        for name, s in per_source.items():
            if s.docs_out == 0:
                console.print(f"[yellow]warning:[/] source {name}: every document was removed; its train/heldout files are empty")

        seconds = time.perf_counter() - t0
        stats = {
            "sources": {name: s.as_dict() for name, s in per_source.items()},
            "stages": {
                name: {**c.as_dict(), **({"extra": stage_extra[name]} if stage_extra.get(name) else {})}
                for name, c in run.stage_counts.items()
            },
            "totals": {
                "docs_in": docs_in,
                "docs_out": docs_out,
                "train_docs": sum(s.train_docs for s in per_source.values()),
                "heldout_docs": sum(s.heldout_docs for s in per_source.values()),
                "bad_records": sum(s.bad_records for s in per_source.values()),
                "quarantined": run.quarantined,
                "chars_in": sum(s.chars_in for s in per_source.values()),
                "chars_out": sum(s.chars_out for s in per_source.values()),
                "bytes_in": sum(v["bytes"] for v in inputs.values()),
            },
            "refused_sources": refused,
            "seconds": round(seconds, 3),
        }
        atomic_write_json(tmp / "stats.json", stats)

        outputs: dict[str, dict] = {}
        parts_listing: dict[str, dict[str, list[str]]] = {}
        for spec in specs:
            parts_listing[spec.name] = {split: [] for split in SPLITS}
            for k, counts in enumerate(part_counts[spec.name]):
                for split in SPLITS:
                    rel = f"{spec.name}/{part_name(split, k)}"
                    p = tmp / rel
                    known = hashes.get(rel) or {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                    outputs[rel] = {**known, "docs": counts[split]}
                    parts_listing[spec.name][split].append(rel)
        for extra in ("quarantine.jsonl", "stats.json"):
            p = tmp / extra
            outputs[extra] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        outputs["quarantine.jsonl"]["docs"] = run.quarantined

        manifest = {
            "kind": MANIFEST_KIND,
            "manifest_id": manifest_id,
            "dataset_version": version,
            "created": now.isoformat(timespec="seconds"),
            "code_version": pretrainlab.__version__,
            "code_fingerprint": code,
            "config": {**config_to_dict(cfg.data), "resolved_input": str(in_dir), "resolved_out": str(out_dir)},
            "inputs": {"dir": str(in_dir), "sources_yaml": {"path": str(registry), "sha256": registry_sha},
                       "files": {k: {kk: vv for kk, vv in v.items() if kk != "progress_total"} for k, v in inputs.items()}},
            "sources": {spec.name: spec.governance() for spec in specs},
            "refused_sources": {
                s.name: {"reason": refused[s.name], "license": s.license, "approval": s.approval}
                for s in all_specs if s.name in refused
            },
            "refused_files": [f.as_dict() for f in gate.refused_files],  # listed and stat-ed, never opened
            "stages": [s.name for s in stages],
            "outputs": outputs,
            "parts": parts_listing,  # per source and split, the part files in order (see data.corpusfiles)
            "counts": stats["totals"],
        }
        atomic_write_json(tmp / "manifest.json", manifest)  # last: its presence marks a complete corpus
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if work is not None:
        dexec.finish_work(dexec.work_root(ex, out_dir), work, ex.keep_work)

    seconds = time.perf_counter() - t0
    _print_table(specs, per_source, out_dir, seconds)
    console.print(f"{version} (id {manifest_id}); governance report: `pretrainlab data report`")
    return {
        "out": str(out_dir),
        "manifest_id": manifest_id,
        "dataset_version": version,
        "up_to_date": False,
        "sources": {
            name: {"docs_in": s.docs_in, "docs_out": s.docs_out, "heldout_docs": s.heldout_docs, "removed": dict(s.removed)}
            for name, s in per_source.items()
        },
        "totals": stats["totals"],
        "seconds": round(seconds, 3),
    }


def _check_conservation(per_source: dict[str, SourceCounts], run: _Run) -> None:
    """Every document read is either written or quarantined under exactly one reason."""
    for name, s in per_source.items():
        removed = sum(s.removed.values())
        if s.docs_in != s.docs_out + removed or s.docs_out != s.train_docs + s.heldout_docs:
            raise RuntimeError(f"internal error: counts of source {name} do not add up "
                               f"(in {s.docs_in} != out {s.docs_out} + removed {removed})")
    total_removed = sum(sum(s.removed.values()) for s in per_source.values())
    if total_removed != run.quarantined:
        raise RuntimeError(f"internal error: {total_removed} removals but {run.quarantined} quarantine records")


# --------------------------------------------------------------------------- executor builds: filter tasks


def filter_task(phase: Path, rank: int) -> dict:
    """Executor task: replay prefix task ``rank``'s documents through the rest of the stages (the
    dedup stages as their rounds decided, see :mod:`.dedupdist`) and write its units' parts, its
    piece of the quarantine and its counts (``result-NNNNN.pkl``, read by :func:`_collect_filtered`)."""
    work_dir = phase.parent.parent
    plan = dexec.load_plan(work_dir)
    stages = build_stages(plan.cfg)
    for stage in stages:
        stage.bind(plan.sources)
    stages = [Decided(plan.cfg, s.name, load_drops(work_dir, s.name, plan.buckets, rank)) if s.name in plan.rounds else s
              for s in stages]
    parts = dexec.Parts(work_dir, plan, [rank])
    per_source: dict[str, SourceCounts] = {}
    written: dict[str, dict] = {}
    best: dict[str, tuple] = {}
    lo, hi = plan.ranges[rank]
    with atomic_open(phase / f"quarantine-{rank:05d}.jsonl", "w") as quarantine:
        run = _Run(stages, quarantine, plan.units, parts)
        run.seq = int(doc_offsets(work_dir, len(plan.ranges))[rank])
        for ui in range(lo, hi):
            unit = plan.units[ui]
            src = per_source.setdefault(unit.source, SourceCounts())
            k = plan.part_index(ui)
            out = work_dir / "out" / unit.source
            counts, b = _write_unit(plan.sources[unit.source], run, out, k, ui, plan.cfg.heldout_fraction, src,
                                    plan.cfg.max_doc_bytes)
            for split in SPLITS:
                p = out / part_name(split, k)
                written[f"{unit.source}/{p.name}"] = {"sha256": sha256_file(p), "bytes": p.stat().st_size, "docs": counts[split]}
            if b is not None and (unit.source not in best or b < best[unit.source]):
                best[unit.source] = b
        parts.drain()
    extras = {s.name: [s.finish()] for s in stages if s.name not in plan.rounds}
    for name, extra in parts.merged_extras().items():  # the prefix tasks' statistics
        extras[name].append(extra)
    result = {"sources": per_source, "stages": run.stage_counts, "quarantined": run.quarantined, "parts": written,
              "best": best, "extras": extras}
    atomic_write_bytes(phase / f"result-{rank:05d}.pkl", pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    return {"documents": sum(s.docs_in for s in per_source.values()), "quarantined": run.quarantined}


def _collect_filtered(work: Path, plan: dexec.Plan, stages: list[Stage], specs: list[SourceSpec], tmp: Path,
                      per_source: dict, part_counts: dict, hashes: dict) -> tuple[_Run, dict]:
    """Gather the filter tasks' parts, quarantine pieces and counts into ``tmp`` (the new corpus)."""
    phase = dexec.phase_dir(work, "filter")
    run = _Run(stages, None, plan.units)
    extras: dict[str, list] = {s.name: [] for s in stages}
    best: dict[str, tuple] = {}
    for spec in specs:
        per_source[spec.name] = SourceCounts()
        n = max(1, sum(u.source == spec.name for u in plan.units))
        part_counts[spec.name] = [{"train": 0, "heldout": 0} for _ in range(n)]
    with atomic_open(tmp / "quarantine.jsonl", "wb") as quarantine:
        for rank in range(len(plan.ranges)):
            with open(phase / f"quarantine-{rank:05d}.jsonl", "rb") as fh:
                shutil.copyfileobj(fh, quarantine)
            with open(phase / f"result-{rank:05d}.pkl", "rb") as fh:
                res = pickle.load(fh)
            for name, c in res["sources"].items():
                per_source[name].add(c)
            for name, c in res["stages"].items():
                run.stage_counts[name].add(c)
            run.quarantined += res["quarantined"]
            for name, pieces in res["extras"].items():
                extras[name].extend(pieces)
            for rel, h in res["parts"].items():
                source, fname = rel.split("/", 1)
                split, k = fname[: -len(".jsonl")].rsplit("-", 1)
                part_counts[source][int(k)][split] = h["docs"]
                hashes[rel] = {"sha256": h["sha256"], "bytes": h["bytes"]}
            for name, b in res["best"].items():
                best[name] = b if name not in best or b < best[name] else best[name]
    (work / dexec.MOVED_MARK).touch()
    for spec in specs:
        (work / "out" / spec.name).mkdir(parents=True, exist_ok=True)
        os.replace(work / "out" / spec.name, tmp / spec.name)
        for split in SPLITS:  # a source without input: empty part 0, as in the in-process build
            (tmp / spec.name / part_name(split, 0)).touch()
        k = _heldout_fallback(tmp / spec.name, part_counts[spec.name], per_source[spec.name], best.get(spec.name),
                              plan.cfg.heldout_fraction)
        if k is not None:
            for split in SPLITS:
                hashes.pop(f"{spec.name}/{part_name(split, k)}", None)
    stage_extra = {name: STAGES[name].merge_extras(pieces) if pieces else {} for name, pieces in extras.items()}
    for name in plan.rounds:
        c = run.stage_counts[name]
        removed = sum(c.removed.values())
        stage_extra[name] = (exact_extras(c.docs_in, removed) if name == "exact_dedup"
                             else near_extras(work, plan.buckets, c.docs_in, removed))
    return run, stage_extra
