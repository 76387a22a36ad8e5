"""The stage interface of the data pipeline and the name -> stage registry.

A stage sees one :class:`Document` at a time and returns it (possibly changed)
or a :class:`Reject` saying why it is removed; the pipeline counts documents and
characters in/out and seconds per stage, and writes every rejection to the
quarantine. Stages that keep state across documents (dedup) do so in the
instance; ``finish()`` returns extra statistics for ``stats.json``.

Adding a stage (quality filter, language ID, PII, MinHash, ...)::

    @register_stage
    class MyFilter(Stage):
        name = "my_filter"

        def process(self, doc):
            return doc if ok(doc.text) else Reject("low_quality", "why, in words")

and list ``my_filter`` in ``data.stages``. Its options come from ``DataConfig``
(the stage gets the whole section), so a new option is a new DataConfig field.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import ClassVar

from pretrainlab.config import DataConfig
from pretrainlab.errors import ConfigError


@dataclass
class Document:
    id: str
    text: str
    source: str
    meta: dict = field(default_factory=dict)
    # Position among the documents read by this build (all sources, read order); not written out.
    seq: int = field(default=-1, repr=False, compare=False)

    def to_record(self) -> dict:
        return {"id": self.id, "text": self.text, "source": self.source, "meta": self.meta}


@dataclass(frozen=True)
class Reject:
    """A removal: ``code`` is the short category counted in stats (e.g. ``too_short``),
    ``reason`` the human sentence written to the quarantine."""

    code: str
    reason: str


class Stage:
    """One step of the pipeline. Subclasses set ``name`` and implement ``process``."""

    name: ClassVar[str] = ""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.sources: dict = {}  # source name -> SourceSpec, set by bind()

    def bind(self, sources: dict) -> None:
        """Called once before the first document with the approved sources (name -> SourceSpec),
        for stages whose behaviour depends on the source (e.g. PII policy)."""
        self.sources = sources

    def process(self, doc: Document) -> Document | Reject:
        raise NotImplementedError

    # True for stages whose decision depends on earlier documents (dedup): they run in the main
    # process in read order; the stages before the first of them may run in worker processes.
    stateful: ClassVar[bool] = False

    # Set on instances running in a worker (executor task): statistics that depend on the global
    # read position are left to the main process. ``process`` then puts what ``account`` needs
    # for the current document into ``note``; the main process calls ``account`` on its own
    # instance at the document's read position (``Document.seq``).
    remote: bool = False
    note: dict | None = None

    def account(self, seq: int, note: dict) -> None:
        """Order-dependent statistics of one document this stage processed in a worker."""

    def finish(self) -> dict:
        """Extra statistics after the last document (merged into stats.json)."""
        return {}

    @classmethod
    def merge_extras(cls, parts: list[dict]) -> dict:
        """Combine ``finish()`` results of several instances that each saw part of the documents
        (parallel workers): numbers add up, dicts merge key by key, lists concatenate."""
        out: dict = {}
        for part in parts:
            _merge_into(out, part)
        return out


def _merge_into(acc: dict, part: dict) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            _merge_into(acc.setdefault(key, {}), value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key in acc:
            acc[key] += value
        elif isinstance(value, list) and key in acc:
            acc[key] = acc[key] + value
        else:
            acc[key] = value


STAGES: dict[str, type[Stage]] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name`")
    if cls.name in STAGES and STAGES[cls.name] is not cls:
        raise ValueError(f"stage name {cls.name!r} registered twice")
    STAGES[cls.name] = cls
    return cls


def load_builtin_stages() -> None:
    """Register the built-in stages (a fresh worker process has not imported them yet)."""
    # Imported for their @register_stage side effect; inside the function because they import this module.
    from pretrainlab.data import dedup, filters, langid, pii, quality  # noqa: F401


def available_stages() -> list[str]:
    load_builtin_stages()
    return sorted(STAGES)


def build_stages(cfg: DataConfig) -> list[Stage]:
    """Instantiate ``cfg.stages`` in order; unknown or repeated names are ConfigErrors."""
    load_builtin_stages()
    out: list[Stage] = []
    for name in cfg.stages:
        if name not in STAGES:
            near = difflib.get_close_matches(name, list(STAGES), n=1, cutoff=0.5)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise ConfigError(f"data.stages: unknown stage '{name}'; {hint}available: {', '.join(sorted(STAGES))}")
        if any(s.name == name for s in out):
            raise ConfigError(f"data.stages: stage '{name}' is listed twice; list each stage once")
        out.append(STAGES[name](cfg))
    return out
