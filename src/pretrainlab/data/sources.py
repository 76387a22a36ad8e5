"""The source registry (``sources.yaml``): parsing, validation and the compliance gate.

``sources.yaml`` maps source names to specs::

    sources:
      stdlib_code:
        path: stdlib_code.jsonl        # file, glob (shards/*.jsonl.zst) or folder; relative to sources.yaml
        format: jsonl                  # jsonl | jsonl.gz | jsonl.zst | parquet | text (default: from the path)
        text_field: text               # JSON key / parquet column holding the text
        languages: [python, en]
        license: PSF-2.0
        approval: {status: approved, by: legal@example.org, date: 2026-01-05}
        modality: text
        pii_policy: keep               # redact | drop | keep (default: data.pii.default_policy)
        group: code                    # mixing group (default: the source name)
        tags: [code]
        skip_stages: [gopher_quality]  # stages this source bypasses (e.g. prose rules on code)

A list of specs each with a ``name`` key is accepted too. Only sources whose
``approval.status`` is ``approved`` may be read; the gate runs before any data
file is opened. The format readers live in :mod:`.readers`.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pretrainlab.errors import DataError

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
PREVIEW_CHARS = 200
FORMATS = ("jsonl", "jsonl.gz", "jsonl.zst", "parquet", "text")
APPROVAL_STATUSES = ("approved", "pending", "rejected")
PII_POLICIES = ("redact", "drop", "keep")


@dataclass
class SourceSpec:
    name: str
    path: Path  # as written, resolved against sources.yaml (file, glob or folder)
    format: str = "jsonl"
    text_field: str = "text"
    license: str | None = None
    approval: dict = field(default_factory=dict)
    languages: list[str] = field(default_factory=list)
    modality: str = "text"
    pii_policy: str | None = None
    group: str = ""
    tags: list[str] = field(default_factory=list)
    skip_stages: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # resolved by check_sources
    raw: dict = field(default_factory=dict)  # the spec as written

    @property
    def approval_status(self) -> str | None:
        return self.approval.get("status") if isinstance(self.approval, dict) else None

    def governance(self) -> dict:
        """What the manifest records about the source."""
        return {
            "license": self.license, "approval": self.approval, "languages": self.languages,
            "modality": self.modality, "pii_policy": self.pii_policy, "text_field": self.text_field,
            "format": self.format, "group": self.group, "tags": self.tags, "skip_stages": self.skip_stages,
        }


def infer_format(path: str) -> str:
    p = path.lower()
    for suffix, fmt in ((".jsonl.gz", "jsonl.gz"), (".json.gz", "jsonl.gz"), (".jsonl.zst", "jsonl.zst"),
                        (".json.zst", "jsonl.zst"), (".parquet", "parquet"), (".jsonl", "jsonl"), (".json", "jsonl")):
        if p.endswith(suffix):
            return fmt
    return "text" if p.endswith("/") or "." not in Path(p).name else "jsonl"


def _str_list(value, where: str, origin: Path) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
        raise DataError(f"{origin}: {where} must be a list of strings")
    return [str(v) for v in value]


def _parse_spec(name: str, spec, origin: Path) -> SourceSpec:
    where = f"source '{name}'"
    if not isinstance(spec, dict):
        raise DataError(f"{origin}: {where} must be a mapping with at least 'path', 'license' and 'approval'")
    if not _NAME.match(name):
        raise DataError(f"{origin}: source name '{name}' may use only letters, digits, '_', '.', '-' (it names an output folder)")
    if not spec.get("path") or not isinstance(spec["path"], str):
        raise DataError(f"{origin}: {where}: field 'path' is missing; give a file, glob or folder relative to sources.yaml")
    fmt = spec.get("format") or infer_format(spec["path"])
    if fmt not in FORMATS:
        raise DataError(f"{origin}: {where}: field 'format' is '{fmt}'; use one of {', '.join(FORMATS)}")
    modality = spec.get("modality", "text")
    if modality != "text":
        raise DataError(f"{origin}: {where}: field 'modality' is '{modality}'; data build handles only 'text' sources")
    approval = spec.get("approval")
    if not isinstance(approval, dict) or "status" not in approval:
        raise DataError(f"{origin}: {where}: field 'approval.status' is missing; set approval: {{status: approved|pending|rejected, by: ..., date: ...}}")
    status = approval["status"]
    if status not in APPROVAL_STATUSES:
        raise DataError(f"{origin}: {where}: field 'approval.status' is {status!r}; use one of {', '.join(APPROVAL_STATUSES)}")
    if status == "approved":
        for key in ("by", "date"):
            if not approval.get(key):
                raise DataError(f"{origin}: {where}: field 'approval.{key}' is missing; an approved source records who approved it and when")
        if not spec.get("license"):
            raise DataError(f"{origin}: {where}: field 'license' is missing; an approved source must state its license (SPDX id or terms)")
    pii = spec.get("pii_policy")
    if pii is not None and pii not in PII_POLICIES:
        raise DataError(f"{origin}: {where}: field 'pii_policy' is {pii!r}; use one of {', '.join(PII_POLICIES)}")
    text_field = spec.get("text_field", "text")
    if not isinstance(text_field, str) or not text_field:
        raise DataError(f"{origin}: {where}: field 'text_field' must be a non-empty string")
    file = Path(spec["path"]).expanduser()
    return SourceSpec(
        name=name,
        path=file if file.is_absolute() else origin.parent / file,
        format=fmt,
        text_field=text_field,
        license=None if spec.get("license") is None else str(spec["license"]),
        approval=approval,
        languages=_str_list(spec.get("languages", spec.get("language")), f"{where}: field 'languages'", origin),
        modality=modality,
        pii_policy=pii,
        group=str(spec.get("group") or name),
        tags=_str_list(spec.get("tags"), f"{where}: field 'tags'", origin),
        skip_stages=_str_list(spec.get("skip_stages"), f"{where}: field 'skip_stages'", origin),
        raw=spec,
    )


def load_registry(path: Path) -> list[SourceSpec]:
    """Parse and validate sources.yaml (DataError with one line naming the field on any problem)."""
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
            items.append((str(e["name"]), {k: v for k, v in e.items() if k != "name"}))
    elif isinstance(entries, dict):
        items = [(str(k), v) for k, v in entries.items()]
    else:
        raise DataError(f"{path}: expected a top-level 'sources:' mapping of source name -> spec; rerun `pretrainlab corpus build`")
    if not items:
        raise DataError(f"{path}: lists no sources; add sources or rerun `pretrainlab corpus build`")
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{path}: source '{dup}' is listed twice; give each source a unique name")
    return [_parse_spec(name, spec, path) for name, spec in items]


def resolve_files(spec: SourceSpec) -> list[Path]:
    """The data files of a source: one file, every match of a glob, or every file under a folder (sorted)."""
    text = str(spec.path)
    if any(c in text for c in "*?["):
        return sorted(Path(p) for p in globlib.glob(text, recursive=True) if Path(p).is_file())
    if spec.path.is_dir():
        return sorted(p for p in spec.path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [spec.path] if spec.path.is_file() else []


def check_sources(specs: list[SourceSpec], registry: Path, mode: str = "error") -> tuple[list[SourceSpec], dict[str, str]]:
    """The compliance gate: runs before anything is read.

    Non-approved sources stop the build (``mode='error'``) or are left out
    (``mode='skip'``); either way nothing of them is opened. Returns the approved
    specs (with ``files`` resolved) and ``{refused name: why}``."""
    refused = {s.name: f"approval.status is {s.approval_status!r}" for s in specs if s.approval_status != "approved"}
    if refused and mode == "error":
        listed = ", ".join(f"'{n}' ({why})" for n, why in refused.items())
        raise DataError(
            f"refusing non-approved source(s) {listed} in {registry}: nothing of them was read; "
            "set approval.status: approved once reviewed, remove them from sources.yaml, or set data.unapproved=skip"
        )
    approved = [s for s in specs if s.name not in refused]
    if not approved:
        raise DataError(f"{registry}: no source is approved ({', '.join(refused)} refused); nothing to build")
    for s in approved:
        s.files = resolve_files(s)
        if not s.files:
            what = "matches no file" if any(c in str(s.path) for c in "*?[") else "not found"
            raise DataError(f"source '{s.name}': file {s.path} {what} (listed in {registry}); rerun `pretrainlab corpus build` or fix its path")
    return approved, refused


@dataclass
class BadRecord:
    """A record that could not be turned into a Document (quarantined by the pipeline)."""

    id: str
    line: int | None
    code: str
    reason: str
    preview: str


def scan_file(path: Path, cut_bytes: int | None = None, cuts: list | None = None) -> tuple[str, int, int]:
    """(sha256, line count, bytes) of a file, read in 1 MiB blocks.

    With ``cut_bytes``, appends to ``cuts`` a ``(offset, line number)`` for the first line
    starting at or after every ``cut_bytes`` bytes (line starts where a large JSONL file can be
    split into byte ranges; the line number is 1-based)."""
    h = hashlib.sha256()
    lines = size = 0
    last = b"\n"
    next_cut = cut_bytes if cut_bytes else None
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
            end = size + len(block)
            while next_cut is not None and next_cut <= end:
                # the line start at or after next_cut: just after the first newline at or after next_cut - 1
                j = block.find(b"\n", max(0, next_cut - 1 - size))
                if j < 0:
                    next_cut = end + 1  # the line goes on into the next block
                    break
                cut = size + j + 1
                cuts.append((cut, lines + block.count(b"\n", 0, j + 1) + 1))
                next_cut = cut + cut_bytes
            lines += block.count(b"\n")
            size = end
            last = block[-1:]
    if cuts and cuts[-1][0] >= size:
        cuts.pop()  # a cut at the very end is no cut
    return h.hexdigest(), lines + (last != b"\n"), size


def read_documents(spec: SourceSpec, max_doc_bytes: int = 10_000_000) -> Iterator:
    """Stream a source's Documents and BadRecords (see :mod:`.readers`)."""
    from pretrainlab.data.readers import read_source

    if not spec.files:
        spec.files = resolve_files(spec)
    return read_source(spec, max_doc_bytes)
