"""The embedded corpus: text already on this machine, written as approved raw sources.

`pretrainlab corpus build` -> :func:`pretrainlab.corpus.embedded.build_corpus`.
"""

from pretrainlab.corpus.embedded import build_corpus

__all__ = ["build_corpus"]
