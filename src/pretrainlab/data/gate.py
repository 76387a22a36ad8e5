"""The compliance gate of `data build`: which files may be read, decided per file before any is opened.

Entries of ``sources.yaml`` may overlap: an approved glob (``**/*.jsonl``) or folder
(``path: .``) can cover a pending source's files, two entries can name one file, a
link in an approved folder can point at a refused file. So admission is decided per
*file*, by the identity of the file behind each path (device and inode, which also
catches hard links; the resolved real path where a filesystem has no inode numbers):

- a file that any refused (pending, rejected) entry matches is refused, whoever else matches it;
- the registry (``sources.yaml``) and the build's own output folders are never data;
- a folder or glob entry does not reach outside its root: a link that resolves out of it is refused.

Refused files are only listed and stat-ed, never opened. ``data.unapproved=error`` stops
the build on a refused source or an escaping link; ``skip`` leaves them out (and an
approved entry left with no file is refused too) and the manifest lists every refused
file and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pretrainlab.data.sources import SourceSpec, resolve_files
from pretrainlab.errors import DataError

WILDCARDS = "*?["


@dataclass
class MatchedFile:
    """One file behind one or more matched paths."""

    path: str  # the resolved real path (of the first path that reached it)
    matched_by: list[str] = field(default_factory=list)  # entry names, registry order
    reasons: list[str] = field(default_factory=list)  # why it is refused; empty: admitted
    paths: list[str] = field(default_factory=list)  # every resolved path that reached it (hard links differ)

    def as_dict(self) -> dict:
        return {"path": self.path, "reason": "; ".join(self.reasons), "matched_by": self.matched_by, "paths": self.paths}


@dataclass
class Admission:
    sources: list[SourceSpec]  # approved entries, ``files`` = their admitted files
    refused_sources: dict[str, str]  # entry name -> why
    refused_files: list[MatchedFile]  # sorted by path


def identity(path: Path) -> tuple:
    """What makes two paths the same file (follows links; stat only, nothing is opened)."""
    st = path.stat()
    return (st.st_dev, st.st_ino) if st.st_ino else (str(path.resolve()),)


def entry_root(spec: SourceSpec) -> Path | None:
    """The folder a folder or glob entry may not leave (None for an entry that names one file)."""
    parts = spec.path.parts
    for i, part in enumerate(parts):
        if any(c in part for c in WILDCARDS):
            return Path(*parts[:i]) if i else Path(".")
    return spec.path if spec.path.is_dir() else None


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _refuse_unapproved(refused: dict[str, str], registry: Path) -> None:
    listed = ", ".join(f"'{n}' ({why})" for n, why in refused.items())
    raise DataError(
        f"refusing non-approved source(s) {listed} in {registry}: nothing of them was read; "
        "set approval.status: approved once reviewed, remove them from sources.yaml, or set data.unapproved=skip"
    )


def _no_files(spec: SourceSpec, matched: list[MatchedFile], registry: Path) -> DataError:
    where = f"(listed in {registry})"
    if matched:
        first = matched[0]
        return DataError(f"source '{spec.name}': every file {spec.path} matches is refused ({len(matched)}; first: "
                         f"{first.path}: {first.reasons[0]}) {where}; narrow its path to the approved files")
    if any(c in str(spec.path) for c in WILDCARDS):
        return DataError(f"source '{spec.name}': file {spec.path} matches no file {where}; fix its path")
    if spec.path.is_dir():
        return DataError(f"source '{spec.name}': folder {spec.path} contains no data files (hidden files are skipped) "
                         f"{where}; put the source's files there or fix its path")
    return DataError(f"source '{spec.name}': file {spec.path} not found {where}; rerun `pretrainlab corpus build` or fix its path")


def check_sources(specs: list[SourceSpec], registry: Path, mode: str = "error",
                  never_data: dict[Path, str] | None = None) -> Admission:
    """Decide which files may be read (see the module docstring); ``never_data`` maps folders
    (this build's outputs) to why nothing under them is data. Sets ``files`` of the admitted specs."""
    refused = {s.name: f"approval.status is {s.approval_status!r}" for s in specs if s.approval_status != "approved"}
    if refused and mode == "error":
        _refuse_unapproved(refused, registry)  # before any path is even listed
    approved = [s for s in specs if s.name not in refused]
    if not approved:
        raise DataError(f"{registry}: no source is approved ({', '.join(refused)} refused); nothing to build")
    files, matched = _match_files(specs)
    _mark_never_data(files, registry, never_data or {})
    for s in specs:
        for _, f in matched[s.name] if s.name in refused else ():
            f.reasons.append(f"matched by refused source '{s.name}' ({refused[s.name]})")
    escapes = _check_roots(approved, matched)
    if escapes and mode == "error":
        name, path, _ = escapes[0]
        target = path.resolve()
        raise DataError(f"source '{name}': {path} is a link to {target}, outside the folder the source names; nothing of "
                        f"it was read; point a source at {target} itself, remove the link, or set data.unapproved=skip")
    for s in approved:
        s.files = [p for p, f in matched[s.name] if not f.reasons]
        if not s.files:
            found = [f for _, f in matched[s.name]]
            if not (found and mode == "skip"):
                raise _no_files(s, found, registry)
            refused[s.name] = f"every file it matches is refused (first: {found[0].path}: {found[0].reasons[0]})"
    admitted = [s for s in approved if s.name not in refused]
    if not admitted:
        why = "; ".join(f"{n}: {w}" for n, w in refused.items())
        raise DataError(f"{registry}: no source has a file that may be read ({why}); nothing to build")
    return Admission(admitted, refused, sorted((f for f in files.values() if f.reasons), key=lambda f: f.path))


def _match_files(specs: list[SourceSpec]) -> tuple[dict[tuple, MatchedFile], dict[str, list[tuple[Path, MatchedFile]]]]:
    """Every file any entry names, by identity, and per entry its (path, file) pairs."""
    files: dict[tuple, MatchedFile] = {}
    matched: dict[str, list[tuple[Path, MatchedFile]]] = {}
    for s in specs:
        matched[s.name] = []
        for p in resolve_files(s):
            real = str(p.resolve())
            f = files.setdefault(identity(p), MatchedFile(real))
            if real not in f.paths:
                f.paths.append(real)
            if s.name not in f.matched_by:  # (a second path to the same file in one entry is read once)
                f.matched_by.append(s.name)
                matched[s.name].append((p, f))
    return files, matched


def _mark_never_data(files: dict[tuple, MatchedFile], registry: Path, never_data: dict[Path, str]) -> None:
    if registry.is_file() and (f := files.get(identity(registry))):
        f.reasons.append("the source registry (sources.yaml) is never data")
    for folder, why in never_data.items():
        real = folder.resolve()
        for f in files.values():
            if any(_inside(Path(p), real) for p in f.paths):
                f.reasons.append(why)


def _check_roots(approved: list[SourceSpec], matched: dict) -> list[tuple[str, Path, MatchedFile]]:
    """Files of folder and glob entries that resolve outside the entry's root (refused; returned)."""
    escapes = []
    for s in approved:
        root = entry_root(s)
        if root is None:
            continue
        real_root = root.resolve()
        for p, f in matched[s.name]:
            if not _inside(p.resolve(), real_root):  # (this entry's path: a hard link inside the root is inside)
                f.reasons.append(f"a link out of {root}, the folder of source '{s.name}'")
                escapes.append((s.name, p, f))
    return escapes
