"""The worker side of `data build`: run the stateless stage prefix on one document.

The stages before the first stateful one (dedup) see each document on its own,
so they can run anywhere (executor tasks, see :mod:`.executor`); the stateful
ones and all counting, quarantining and writing stay in the main process, in read
order. A worker records each document's *trace* -- per stage: characters in and
out, seconds, skipped, or the rejection, plus the stage's ``note`` for
order-dependent statistics -- and the main process replays it into the same
counters the in-process path uses, so the outputs are identical.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from pretrainlab.data.sources import PREVIEW_CHARS
from pretrainlab.data.stages import Document, Reject, Stage


@dataclass
class Step:
    stage: str
    chars_in: int = 0
    chars_out: int = 0
    seconds: float = 0.0
    skipped: bool = False
    code: str | None = None  # set when the stage removed the document
    reason: str | None = None
    preview: str | None = None
    note: dict | None = None  # the stage's ``note`` (see Stage.account)


@dataclass
class Trace:
    chars_read: int
    steps: list[Step]
    doc: Document | None  # the document after the prefix stages, None when removed


def resolve_workers(workers: int) -> int:
    return workers if workers > 0 else (os.cpu_count() or 1)


def prefix_length(stages: list[Stage]) -> int:
    """How many leading stages may run in workers (those before the first stateful one)."""
    for i, s in enumerate(stages):
        if s.stateful:
            return i
    return len(stages)


def run_stages(stages: list[Stage], doc: Document, skip: frozenset) -> Trace:
    """Apply ``stages`` to one document, recording what each did."""
    trace = Trace(len(doc.text), [], None)
    for stage in stages:
        if stage.name in skip:
            trace.steps.append(Step(stage.name, skipped=True))
            continue
        text_in = doc.text  # the quarantine shows the text as it entered the stage (a stage may change it, then reject)
        chars_in = len(text_in)
        stage.note = None
        t = time.perf_counter()
        result = stage.process(doc)
        seconds = time.perf_counter() - t
        if isinstance(result, Reject):
            trace.steps.append(Step(stage.name, chars_in, 0, seconds, code=result.code, reason=result.reason,
                                    preview=text_in[:PREVIEW_CHARS], note=stage.note))
            return trace
        doc = result
        trace.steps.append(Step(stage.name, chars_in, len(doc.text), seconds, note=stage.note))
    trace.doc = doc
    return trace
