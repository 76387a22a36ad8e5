"""The `corpus` config section, owned by this package.

``pretrainlab.config.ProjectConfig`` gathers every package's section; this module imports
nothing from pretrainlab but the ``Section`` base (and other packages' section modules), so
``pretrainlab.config`` can import it without a circle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pretrainlab.configsection import Section

SOURCE_NAMES = ("stdlib_code", "stdlib_docstrings", "man_pages", "share_doc")


class CorpusConfig(Section):
    """`corpus build`: the embedded corpus made from text already on this machine."""

    out: Path | None = Field(None, description="Where raw source JSONL files go (default: <workdir>/raw).")
    size: Literal["small", "medium", "large"] = Field(
        "small", description="small: quickstart-sized (~minutes); medium/large: more documents per source."
    )
    sources: list[str] = Field(list(SOURCE_NAMES), description=f"Sources to build, from {list(SOURCE_NAMES)}.")
    max_docs_per_source: int | None = Field(None, ge=1, description="Overrides the per-source document cap of `size`.")
    seed: int = Field(0, description="Seed for choosing which files are sampled into a capped source.")

    @model_validator(mode="after")
    def _known_sources(self) -> "CorpusConfig":
        for s in self.sources:
            if s not in SOURCE_NAMES:
                raise ValueError(f"unknown source {s!r}; choose from {list(SOURCE_NAMES)}")
        return self
