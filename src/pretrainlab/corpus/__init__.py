"""The embedded corpus: text already on this machine, written as approved raw sources.

`pretrainlab corpus build` -> :func:`pretrainlab.corpus.embedded.build_corpus`.

Import-free: ``pretrainlab.config`` imports this package's ``config`` module, and the
stage modules import ``pretrainlab.config``; import them by their full name.
"""
