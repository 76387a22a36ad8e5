"""Data pipeline: approved raw sources -> clean corpus (+ quarantine, stats, manifest).

`pretrainlab data build` -> :func:`pretrainlab.data.pipeline.build_clean_corpus`.
Stages (normalize, filters, dedup, ...) share the small interface in
:mod:`pretrainlab.data.stages`; new ones register themselves by name.
"""

from pretrainlab.data.pipeline import build_clean_corpus

__all__ = ["build_clean_corpus"]
