"""Progress bars with throughput and ETA for every long-running stage (rich)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True, highlight=False)


def _columns(unit: str):
    return (
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("[cyan]{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )


class _Bar:
    """Handle returned by `progress_bar`: call advance(n) as work completes."""

    def __init__(self, progress: Progress, task_id, unit: str):
        self._p, self._id, self._unit = progress, task_id, unit

    def advance(self, n: float = 1) -> None:
        self._p.advance(self._id, n)
        task = self._p.tasks[self._id]
        speed = task.speed
        rate = f"{speed:,.0f} {self._unit}/s" if speed else ""
        self._p.update(self._id, rate=rate)

    def set_total(self, total: float | None) -> None:
        self._p.update(self._id, total=total)


@contextmanager
def progress_bar(description: str, total: float | None, unit: str = "docs") -> Iterator[_Bar]:
    """A progress bar with count, throughput (unit/s), elapsed time and ETA.

    Renders live on a terminal; when stderr is not a terminal (CI, logs) it stays
    silent until the end and prints one summary line.
    """
    live = sys.stderr.isatty()
    progress = Progress(*_columns(unit), console=console, transient=False, disable=not live)
    with progress:
        task_id = progress.add_task(description, total=total, rate="")
        bar = _Bar(progress, task_id, unit)
        yield bar
        if not live:
            task = progress.tasks[task_id]
            elapsed = task.elapsed or 0.0
            rate = task.completed / elapsed if elapsed > 0 else 0.0
            console.print(f"{description}: {task.completed:,.0f} {unit} in {elapsed:.1f}s ({rate:,.0f} {unit}/s)")


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "docs") -> Iterator[T]:
    """Iterate with a progress bar (one unit per item)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(description, total, unit) as bar:
        for item in items:
            yield item
            bar.advance(1)
