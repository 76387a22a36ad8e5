"""Experiments: the training-accident suite, comparison sweeps and the LR range test.

Each is one command that trains small variants of a base config with the normal
trainer, measures them from their per-step metrics, and writes a report (HTML +
markdown) in the plan's experiment-record form. This package's ``__init__`` stays
import-free because ``pretrainlab.config`` imports ``experiments.config``.
"""
