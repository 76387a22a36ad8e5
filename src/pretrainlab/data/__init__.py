"""Data pipeline: approved raw sources -> clean corpus (+ quarantine, stats, manifest).

`pretrainlab data build` -> :func:`pretrainlab.data.pipeline.build_clean_corpus`.
Stages (normalize, filters, dedup, ...) share the small interface in
:mod:`pretrainlab.data.stages`; new ones register themselves by name.

Import-free: ``pretrainlab.config`` imports this package's ``config`` module, and the
stage modules import ``pretrainlab.config``; import them by their full name.
"""
