"""The source registry (``sources.yaml``) and the streaming JSONL reader.

``sources.yaml`` maps source names to specs::

    sources:
      stdlib_code:
        path: stdlib_code.jsonl        # relative to sources.yaml (or absolute)
        format: jsonl
        text_field: text
        languages: [python, en]
        license: PSF-2.0
        approval: {status: approved, by: ..., date: ...}
        modality: text
        pii_policy: keep

A list of specs each with a ``name`` key is accepted too. Only sources whose
``approval.status`` is ``approved`` may be read; the check runs before any data
file is opened.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pretrainlab.data.stages import Document
from pretrainlab.errors import DataError

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
PREVIEW_CHARS = 200


@dataclass
class SourceSpec:
    name: str
    path: Path  # resolved data file
    format: str = "jsonl"
    text_field: str = "text"
    license: str | None = None
    approval: dict = field(default_factory=dict)
    languages: list[str] = field(default_factory=list)
    modality: str = "text"
    pii_policy: str | None = None
    raw: dict = field(default_factory=dict)  # the spec as written

    @property
    def approval_status(self) -> str | None:
        return self.approval.get("status") if isinstance(self.approval, dict) else None


def load_registry(path: Path) -> list[SourceSpec]:
    """Parse and validate sources.yaml (DataError with one line on any problem)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save sources.yaml as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise DataError(f"{path}: YAML syntax error{where}; fix the file or rerun `pretrainlab corpus build`") from None
    entries = data.get("sources") if isinstance(data, dict) else None
    if isinstance(entries, list):
        items = []
        for e in entries:
            if not isinstance(e, dict) or not e.get("name"):
                raise DataError(f"{path}: every entry of the 'sources' list needs a 'name'")
            items.append((str(e["name"]), e))
    elif isinstance(entries, dict):
        items = [(str(k), v) for k, v in entries.items()]
    else:
        raise DataError(f"{path}: expected a top-level 'sources:' mapping of source name -> spec; rerun `pretrainlab corpus build`")
    if not items:
        raise DataError(f"{path}: lists no sources; add sources or rerun `pretrainlab corpus build`")
    specs = []
    for name, spec in items:
        if not isinstance(spec, dict):
            raise DataError(f"{path}: source '{name}' must be a mapping with at least 'path' and 'approval'")
        if not _NAME.match(name):
            raise DataError(f"{path}: source name '{name}' may use only letters, digits, '_', '.', '-' (it names an output folder)")
        if not spec.get("path"):
            raise DataError(f"{path}: source '{name}' has no 'path'; give the JSONL file relative to sources.yaml")
        fmt = spec.get("format", "jsonl")
        if fmt != "jsonl":
            raise DataError(f"{path}: source '{name}' has format '{fmt}'; data build reads only 'jsonl'")
        modality = spec.get("modality", "text")
        if modality != "text":
            raise DataError(f"{path}: source '{name}' has modality '{modality}'; data build handles only 'text' sources")
        file = Path(spec["path"])
        specs.append(
            SourceSpec(
                name=name,
                path=file if file.is_absolute() else path.parent / file,
                format=fmt,
                text_field=str(spec.get("text_field", "text")),
                license=spec.get("license"),
                approval=spec.get("approval") or {},
                languages=list(spec.get("languages") or spec.get("language") or []),
                modality=modality,
                pii_policy=spec.get("pii_policy"),
                raw=spec,
            )
        )
    return specs


def check_sources(specs: list[SourceSpec], registry: Path) -> None:
    """Refuse non-approved sources and missing files before anything is read."""
    refused = [f"'{s.name}' (approval.status: {s.approval_status!r})" for s in specs if s.approval_status != "approved"]
    if refused:
        raise DataError(
            f"refusing non-approved source(s) {', '.join(refused)} in {registry}: nothing of them was read; "
            "set approval.status: approved once reviewed, or remove them from sources.yaml"
        )
    for s in specs:
        if not s.path.is_file():
            raise DataError(
                f"source '{s.name}': file {s.path} not found (listed in {registry}); "
                "rerun `pretrainlab corpus build` or fix its path"
            )


@dataclass
class BadRecord:
    """A line that could not be turned into a Document (quarantined by the pipeline)."""

    id: str
    line: int
    code: str
    reason: str
    preview: str


def scan_file(path: Path) -> tuple[str, int, int]:
    """(sha256, line count, bytes) of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    lines = size = 0
    last = b"\n"
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
            lines += block.count(b"\n")
            size += len(block)
            last = block[-1:]
    return h.hexdigest(), lines + (last != b"\n"), size


def read_documents(spec: SourceSpec) -> Iterator[Document | BadRecord]:
    """Stream a JSONL source line by line (binary, decoded per line: one bad line
    never hides the rest of the file). Blank lines are skipped."""
    with open(spec.path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            bad_id = f"{spec.name}:line{lineno}"
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
            if not isinstance(rec, dict):
                yield BadRecord(bad_id, lineno, "not_an_object", f"line {lineno}: expected a JSON object, got {type(rec).__name__}", line[:PREVIEW_CHARS])
                continue
            rid = rec.get("id")
            rid = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid) else bad_id
            text = rec.get(spec.text_field)
            if text is None:
                yield BadRecord(rid, lineno, "missing_text", f"line {lineno}: no '{spec.text_field}' field", line[:PREVIEW_CHARS])
                continue
            if not isinstance(text, str):
                yield BadRecord(rid, lineno, "text_not_string", f"line {lineno}: '{spec.text_field}' is a {type(text).__name__}, not a string", line[:PREVIEW_CHARS])
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                yield BadRecord(rid, lineno, "invalid_utf8", f"line {lineno}: text has unpaired surrogate escapes (not encodable as UTF-8)", line[:PREVIEW_CHARS])
                continue
            meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
            yield Document(rid, text, spec.name, meta)
