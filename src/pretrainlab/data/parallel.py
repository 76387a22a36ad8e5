"""Run the per-document stages of `data build` in worker processes.

The stages before the first stateful one (dedup) see each document on its own,
so they can run anywhere; the stateful ones and all counting, quarantining and
writing stay in the main process, in read order. The main process reads records,
sends them in batches to a process pool (``imap``: results come back in order)
and replays each document's *trace* -- per stage: characters in and out, seconds,
skipped, or the rejection -- into the same counters the sequential path uses,
so the outputs are identical to ``data.workers=1``. Each batch runs on fresh
stage instances; their ``finish()`` statistics are combined with the stage's
``merge_extras``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pretrainlab.config import DataConfig
from pretrainlab.data.sources import PREVIEW_CHARS, SourceSpec
from pretrainlab.data.stages import STAGES, Document, Reject, Stage

BATCH_DOCS = 64


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
        chars_in = len(doc.text)
        t = time.perf_counter()
        result = stage.process(doc)
        seconds = time.perf_counter() - t
        if isinstance(result, Reject):
            trace.steps.append(Step(stage.name, chars_in, 0, seconds, code=result.code, reason=result.reason,
                                    preview=doc.text[:PREVIEW_CHARS]))
            return trace
        doc = result
        trace.steps.append(Step(stage.name, chars_in, len(doc.text), seconds))
    trace.doc = doc
    return trace


_WORKER: dict = {}


def _init(cfg: DataConfig, names: list[str], sources: dict[str, SourceSpec]) -> None:
    _WORKER.update(cfg=cfg, names=names, sources=sources)


def _work(batch: list[tuple[Document, frozenset]]) -> tuple[list[Trace], dict[str, dict]]:
    stages = [STAGES[n](_WORKER["cfg"]) for n in _WORKER["names"]]
    for s in stages:
        s.bind(_WORKER["sources"])
    traces = [run_stages(stages, doc, skip) for doc, skip in batch]
    return traces, {s.name: s.finish() for s in stages}


class PrefixPool:
    """A pool of workers running the stages ``names``; ``map`` keeps the input order."""

    def __init__(self, cfg: DataConfig, names: list[str], sources: dict[str, SourceSpec], workers: int) -> None:
        # fork shares the loaded language-ID model and imported modules; spawn elsewhere.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        self.pool = mp.get_context(method).Pool(workers, initializer=_init, initargs=(cfg, names, sources))
        self.extras: dict[str, list[dict]] = {n: [] for n in names}

    def map(self, docs: Iterable[tuple[Document, frozenset]]) -> Iterator[Trace]:
        for traces, extras in self.pool.imap(_work, _batches(docs), chunksize=1):
            for name, extra in extras.items():
                self.extras[name].append(extra)
            yield from traces

    def merged_extras(self) -> dict[str, dict]:
        return {n: STAGES[n].merge_extras(parts) for n, parts in self.extras.items()}

    def close(self) -> None:
        self.pool.close()
        self.pool.join()

    def terminate(self) -> None:
        self.pool.terminate()
        self.pool.join()


def _batches(items: Iterable, size: int = BATCH_DOCS) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
