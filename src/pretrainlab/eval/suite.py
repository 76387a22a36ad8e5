"""The task set of a run: resolve `eval.tasks` to task files (making the built-in ones) and score them.

Built-in tasks are written once per run to ``<run>/tasks/builtin/<task>.jsonl``
with an ``info.json`` recording what they were made from (held-out shard
hashes, tokenizer, count, seed); they are rebuilt only when that changes, so
every checkpoint of a run, the in-training evaluation and lm-eval all score the
same examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pretrainlab.errors import UserError
from pretrainlab.eval.builtin_tasks import BUILTIN_TASKS, write_builtin_tasks
from pretrainlab.eval.tasks import Task, evaluate_task, load_task
from pretrainlab.fsio import atomic_write_json, read_json
from pretrainlab.tokenizer.shards import read_tokens_manifest

BUILTIN = "builtin"


def builtin_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "tasks" / BUILTIN


def ensure_builtin_tasks(run_dir: str | Path, tokens_dir: str | Path, tokenizer, n: int, seed: int) -> dict[str, Path]:
    """Built-in task files of a run, (re)made when their inputs changed; {task: path}."""
    out = builtin_dir(run_dir)
    manifest = read_tokens_manifest(tokens_dir)
    basis = {
        "tokenizer_sha256": tokenizer.sha256 if hasattr(tokenizer, "sha256") else None,
        "heldout": {s: (parts.get("heldout") or {}).get("bin_sha256") for s, parts in sorted(manifest["sources"].items())},
        "examples": n,
        "seed": seed,
    }
    info_path = out / "info.json"
    try:
        info = read_json(info_path)
    except (OSError, ValueError):
        info = None
    if info and info.get("basis") == basis:
        return {t: out / f"{t}.jsonl" for t in info["tasks"] if (out / f"{t}.jsonl").is_file()}
    paths = write_builtin_tasks(tokens_dir, tokenizer, out, n, seed)
    atomic_write_json(info_path, {"basis": basis, "tasks": sorted(paths)})
    return paths


def resolve_tasks(names: list[str], run_dir: str | Path, tokens_dir: str | Path, tokenizer, n: int, seed: int) -> list[Task]:
    """`eval.tasks` entries -> loaded tasks (built-in names expand; anything else is a JSONL path)."""
    tasks: list[Task] = []
    builtin: dict[str, Path] | None = None
    for name in names:
        if name == BUILTIN or name in BUILTIN_TASKS:
            if builtin is None:
                builtin = ensure_builtin_tasks(run_dir, tokens_dir, tokenizer, n, seed)
            wanted = BUILTIN_TASKS if name == BUILTIN else (name,)
            tasks += [load_task(builtin[t], t) for t in wanted if t in builtin]
        else:
            path = Path(name)
            if not path.is_file():
                raise UserError(f"eval.tasks: {name!r} is neither a built-in task ({BUILTIN}, "
                                f"{', '.join(BUILTIN_TASKS)}) nor an existing JSONL file")
            tasks.append(load_task(path, limit=n))
    seen: set[str] = set()
    for t in tasks:
        if t.name in seen:
            raise UserError(f"eval.tasks: two tasks are named {t.name!r}; rename one of the files")
        seen.add(t.name)
    return tasks


def run_tasks(model, tokenizer, tasks: list[Task], batch_size: int, device=None, show_progress: bool = True) -> dict[str, Any]:
    """{task name: metrics} for every task."""
    return {t.name: evaluate_task(model, tokenizer, t, batch_size, device, show_progress) for t in tasks}
