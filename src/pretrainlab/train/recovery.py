"""Which checkpoint a run resumes from: the newest one that verifies; damaged newer ones are set aside.

``find_resumable`` walks a run's step folders newest first. A folder without a
completion marker (its save never finished, or the marker was lost in a copy)
or one whose files no longer match the sizes and checksums recorded when it
was saved (``integrity.verify``) is skipped with its reason, and renamed aside
to ``checkpoints/.corrupt-step_N`` or ``.incomplete-step_N``: never deleted,
never pruned, never replaced by a later save of the same step, and out of the
way of the next ``--resume auto``. Under torchrun every rank calls it; the
ranks split the checksum reading and agree on each verdict.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pretrainlab.errors import UserError
from pretrainlab.train.checkpoint import checkpoint_root
from pretrainlab.train.integrity import read_marker, verify

_STEP_DIR = re.compile(r"^step_(\d{8})$")


@dataclass
class Skipped:
    """A newer checkpoint that was not used: its step, where it was, why, and where it went."""

    step: int
    path: Path
    reason: str
    moved_to: Path | None = None

    def line(self) -> str:
        where = f"; moved to {self.moved_to}" if self.moved_to else ""
        return f"step {self.step} skipped: {self.reason}{where}"

    def event(self) -> dict:
        return {"skipped_step": self.step, "path": str(self.path), "reason": self.reason,
                "moved_to": str(self.moved_to) if self.moved_to else None}


@dataclass
class Resumable:
    """The checkpoint to resume from (None: none is usable) and the newer ones skipped on the way."""

    path: Path | None
    step: int | None = None
    skipped: list[Skipped] = field(default_factory=list)

    def summary(self) -> str:
        """'resumed from step 14; step 21 skipped: no completion marker (...)' -- the one console line."""
        head = f"resumed from step {self.step}" if self.path is not None else "no usable checkpoint"
        return "; ".join([head, *(s.line() for s in self.skipped)])


def step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """Every ``step_N`` folder of a run, complete or not, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def find_resumable(run_dir: Path, rank: int = 0, world: int = 1, group=None, set_aside: bool = True) -> Resumable:
    """The newest checkpoint of ``run_dir`` that verifies, with each newer one skipped and why.

    ``group`` (a gloo process group) is needed when ``world > 1``: each rank checks
    every size and its share of the checksums, and the ranks agree on each verdict.
    Rank 0 renames a skipped folder aside unless ``set_aside`` is False.
    """
    skipped: list[Skipped] = []
    for step, path in reversed(step_dirs(run_dir)):
        problem = _agree(verify(path, share=(rank, world)), group)
        if problem is None:
            return Resumable(path, step, skipped)
        moved = _set_aside(path) if set_aside and rank == 0 else None
        skipped.append(Skipped(step, path, problem, moved))
    return Resumable(None, None, skipped)


def resume_auto(run_dir: Path, rank: int = 0, world: int = 1, group=None) -> Resumable:
    """``find_resumable`` for ``--resume auto``: checkpoints that exist but are all damaged stop the run.

    Starting from step 0 over a run's logs would mix two runs; the user decides.
    """
    found = find_resumable(run_dir, rank, world, group)
    if found.path is None and found.skipped:
        raise UserError(f"{run_dir}: no intact checkpoint to resume from ({'; '.join(s.line() for s in found.skipped)}); "
                        "restore one, or start over under a new --set run.name=NAME")
    return found


def _agree(problem: str | None, group) -> str | None:
    """The first rank's problem (None only if no rank found one): every rank takes the same decision."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return problem
    verdicts: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(verdicts, problem, group=group)
    return next((v for v in verdicts if v is not None), None)


def _set_aside(path: Path) -> Path | None:
    """Rename a damaged checkpoint to a hidden name nothing lists, prunes or overwrites; None if that fails."""
    kind = "corrupt" if read_marker(path) is not None else "incomplete"
    target = path.parent / f".{kind}-{path.name}"
    n = 1
    while target.exists():
        n += 1
        target = path.parent / f".{kind}-{path.name}-{n}"
    try:
        os.replace(path, target)
    except OSError:
        return None  # a read-only copy: it stays, and is skipped again next time
    return target
