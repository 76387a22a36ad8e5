"""Planner: compute, time, cost, memory and I/O budget of a training run, calibrated from real runs.

``pretrainlab plan`` turns a model (a trainer YAML or a preset), a token
budget, hardware and parallelism into FLOPs, wall time, device-hours, cost,
per-device memory, checkpoint and data bandwidth, a Chinchilla prior and an
energy estimate. Every formula is in ``formulas.py`` and explained, with
references, in docs/PLANNER.md.
"""
