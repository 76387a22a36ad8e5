"""Durable file writes and content hashing.

Files that matter are written to a temporary name in the same directory, fsynced
and renamed over the target, so a crash at any instant leaves either the old or
the new file, never a torn one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from pretrainlab.errors import DataError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def give_ordinary_permissions(path: str | Path) -> None:
    """Mode 0666 less the umask, as open() gives; for files a library wrote 0600 (mkstemp, safetensors)."""
    os.chmod(path, _FILE_MODE)


def fsync_dir(path: Path) -> None:
    """Persist a directory entry (a rename or a new file) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on clean exit fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError):
            raise _with_path(err, path) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write records one JSON object per line; returns how many were written."""
    n = 0
    with atomic_open(path, "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line and flush it (metrics and events logs).

    A torn last line left by a crash mid-append is cut off first, so that a log
    appended to after a crash still has only whole lines (``iter_jsonl``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "a+b", buffering=0) as fh:  # one write() per record: no half record from a full buffer
            _cut_torn_tail(fh)
            data = memoryview((json.dumps(record, ensure_ascii=False, default=float) + "\n").encode("utf-8"))
            while data:  # a raw write may be short (a filling disk): the rest, or the error, comes next
                data = data[fh.write(data):]
    except OSError as err:
        raise _with_path(err, path) from None


def _cut_torn_tail(fh) -> None:
    """Truncate a file opened "a+b" back to just after its last newline (nothing if it ends with one)."""
    end = fh.seek(0, os.SEEK_END)
    if end == 0:
        return
    fh.seek(end - 1)
    if fh.read(1) == b"\n":
        return
    pos = end
    while pos > 0:  # scan back in blocks for the previous newline
        start = max(0, pos - 65536)
        fh.seek(start)
        block = fh.read(pos - start)
        nl = block.rfind(b"\n")
        if nl >= 0:
            fh.truncate(start + nl + 1)
            return
        pos = start
    fh.truncate(0)


def _with_path(err: OSError, path: Path) -> OSError:
    """The same error, naming the file (a failed write() does not) and, when the disk is full, the free space."""
    if err.filename is not None and err.errno != errno.ENOSPC:
        return err
    why = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        try:
            why = f"{why} ({shutil.disk_usage(path.parent).free:,} bytes free)"
        except OSError:
            pass
    return OSError(err.errno, why, str(path))


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield the records of a JSONL file, one JSON object per line.

    Only the last line may be torn (a crash mid-append): it is skipped with a
    warning. Any other line that is not a JSON object raises ``DataError`` naming
    the file and the line: a damaged log must not be read as a shorter, clean one.
    """
    with open(path, "rb") as fh:
        pending: tuple[int, str] | None = None  # a bad line is an error only once a later line exists
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            if pending is not None:
                raise _malformed(path, *pending)
            rec, why = _parse_line(raw)
            if why is not None:
                pending = (lineno, why)
                continue
            yield rec
    if pending is not None:
        warnings.warn(f"{path}:{pending[0]}: torn last line skipped ({pending[1]}); a crash mid-append leaves one",
                      stacklevel=2)


def _parse_line(raw: bytes) -> tuple[dict | None, str | None]:
    """(record, None) for a line holding one JSON object, else (None, what is wrong with it)."""
    try:
        rec = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8"
    except json.JSONDecodeError as err:
        return None, f"not valid JSON: {err.msg}, character {err.pos + 1}"
    if not isinstance(rec, dict):
        return None, f"a JSON {type(rec).__name__}, not an object"
    return rec, None


def _malformed(path: str | Path, lineno: int, why: str) -> DataError:
    return DataError(f"{path}:{lineno}: malformed line ({why}); only a torn last line is tolerated; "
                     "the file is damaged: restore it or remove that line")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Move a fully written directory ``tmp`` to ``final``, replacing any existing one.

    The old directory is first renamed to a hidden name, so at every instant
    ``final`` is either the complete old tree or the complete new one.
    """
    tmp, final = Path(tmp), Path(final)
    fsync_dir(tmp)
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


# --------------------------------------------------------------------------- leftovers of killed writers

# What the writers above leave when their process is killed: atomic_open's mkstemp file
# (".<name>.<8 random [a-z0-9_]>.tmp"), replace_dir's ".<name>.old-<pid>", and a stage's
# mkdtemp folder ".<name>.tmp-<random>". Nothing else is ever matched.
_TMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Remove what a killed writer of ``target`` left beside it: ``.<name>.tmp-*`` / ``.<name>.old-*`` folders and
    ``.<name>.*.tmp`` files. Call it before writing ``target`` anew (one writer at a time); returns what went."""
    target = Path(target)
    parent, name = target.parent, re.escape(target.name)
    if not parent.is_dir():
        return []
    ours = re.compile(rf"^\.{name}\.(tmp-.+|old-\d+|[a-z0-9_]{{8}}\.tmp)$")
    return [_remove(p) for p in sorted(parent.iterdir()) if ours.match(p.name)]


def remove_temporary_files(directory: str | Path, depth: int = 1) -> list[Path]:
    """Remove ``atomic_open``'s temporary files (``.<name>.<8 chars>.tmp``) in ``directory`` and its subfolders
    down to ``depth`` levels: what a killed writer left. Returns what went."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in sorted(directory.iterdir()):
        if p.is_file() and _TMP_FILE.match(p.name):
            removed.append(_remove(p))
        elif depth > 0 and p.is_dir() and not p.is_symlink():
            removed += remove_temporary_files(p, depth - 1)
    return removed


def _remove(path: Path) -> Path:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return path
