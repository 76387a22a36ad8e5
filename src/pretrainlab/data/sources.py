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

A list of specs each with a ``name`` key is accepted too; a key written twice
anywhere in the file is an error. Only sources whose ``approval.status`` is
``approved`` may be read, and admission is decided per *file*, by identity of
the file behind the path (:mod:`.gate`): a file that any refused entry
matches is refused whoever else matches it, ``sources.yaml`` itself is never
data, and a link out of a folder or glob's root is not followed. The gate runs
before any data file is opened. The format readers live in :mod:`.readers`.
"""

from __future__ import annotations

import datetime as dt
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
    files: list[Path] = field(default_factory=list)  # the admitted files, set by gate.check_sources
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


class _DuplicateKey(Exception):
    def __init__(self, key, line: int, first: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key written twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(key, line, seen[key])
                    seen[key] = line
                except TypeError:  # unhashable key: the base class reports it
                    continue
        return super().construct_mapping(node, deep)

    def construct_yaml_timestamp(self, node):
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError:  # 2026-13-45 looks like a date but is none: kept as text, refused by the field check
            return self.construct_scalar(node)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:timestamp", _UniqueKeyLoader.construct_yaml_timestamp)


def _show(value) -> str:
    kind = "a number" if isinstance(value, (int, float)) and not isinstance(value, bool) else f"a {type(value).__name__}"
    return f"{value!r} ({kind})"


def _text_field(spec: dict, key: str, label: str, where: str, origin: Path, why: str) -> None:
    """``spec[key]`` (field ``label``) must be a non-blank string (``why``: what the field is for)."""
    value = spec.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{origin}: {where}: field '{label}' is missing or blank; {why}")
    if not isinstance(value, str):
        raise DataError(f"{origin}: {where}: field '{label}' is {_show(value)}, not a string; {why} (quote it in YAML)")


def latest_date_anywhere() -> dt.date:
    """Today's date in the timezone furthest ahead (UTC+14): an approval dated later is in the future everywhere."""
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=14)).date()


def _approval_date(value, where: str, origin: Path) -> dt.date:
    fix = "write the day the source was approved as YYYY-MM-DD"
    if value is None or value == "":
        raise DataError(f"{origin}: {where}: field 'approval.date' is missing; an approved source records who approved it and when")
    if isinstance(value, dt.datetime):
        day = value.date()
    elif isinstance(value, dt.date):
        day = value
    elif isinstance(value, str):
        try:
            day = dt.date.fromisoformat(value.strip())
        except ValueError:
            raise DataError(f"{origin}: {where}: field 'approval.date' is {value!r}, not a date; {fix}") from None
    else:
        raise DataError(f"{origin}: {where}: field 'approval.date' is {_show(value)}, not a date; {fix}")
    if day > latest_date_anywhere():
        raise DataError(f"{origin}: {where}: field 'approval.date' is {day.isoformat()}, in the future; {fix}")
    return day


def _check_approved(spec: dict, approval: dict, where: str, origin: Path) -> None:
    """An approved source says who approved it (a name), when (a real, past date) and under which license."""
    _text_field(approval, "by", "approval.by", where, origin, "an approved source records who approved it and when")
    _approval_date(approval.get("date"), where, origin)
    _text_field(spec, "license", "license", where, origin, "an approved source must state its license (SPDX id or terms)")


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
    path = spec.get("path")
    if path is None or path == "":
        raise DataError(f"{origin}: {where}: field 'path' is missing; give a file, glob or folder relative to sources.yaml")
    if not isinstance(path, str):
        raise DataError(f"{origin}: {where}: field 'path' is {_show(path)}; it must be a string: a file, glob or folder "
                        "relative to sources.yaml (quote it in YAML)")
    group = spec.get("group")
    if group is not None and not isinstance(group, str):
        raise DataError(f"{origin}: {where}: field 'group' is {_show(group)}; it must be one mixing-group name (a string)")
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
        _check_approved(spec, approval, where, origin)
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
        group=group or name,
        tags=_str_list(spec.get("tags"), f"{where}: field 'tags'", origin),
        skip_stages=_str_list(spec.get("skip_stages"), f"{where}: field 'skip_stages'", origin),
        raw=spec,
    )


def load_registry(path: Path) -> list[SourceSpec]:
    """Parse and validate sources.yaml (DataError with one line naming the field on any problem)."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save sources.yaml as UTF-8") from None
    except _DuplicateKey as dup:
        raise DataError(f"{path}: key '{dup.key}' is written twice (lines {dup.first} and {dup.line}); YAML would keep "
                        "only the last one: merge the two or rename one") from None
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
    """The paths a source names: one file, every match of a glob, or every file under a folder
    (sorted; hidden files and folders are skipped, as a glob skips them). Only lists and stats:
    which of them may be read is the gate's decision (:mod:`.gate`)."""
    text = str(spec.path)
    if any(c in text for c in "*?["):
        return sorted(Path(p) for p in globlib.glob(text, recursive=True) if Path(p).is_file())
    if spec.path.is_dir():
        return sorted(p for p in spec.path.rglob("*")
                      if p.is_file() and not any(part.startswith(".") for part in p.relative_to(spec.path).parts))
    return [spec.path] if spec.path.is_file() else []


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
    """Stream the Documents and BadRecords of a source's admitted files (``files``, set by the
    gate in :mod:`.gate`; nothing else is ever read). See :mod:`.readers`."""
    from pretrainlab.data.readers import read_source  # readers imports this module (a circle)

    return read_source(spec, max_doc_bytes)
