"""Synchronization check before packing: every time-slice group must agree on its time.

A group's drift is ``max(t_ns) - min(t_ns)`` over its segments (all cameras,
audio, action and text at time t). A sample with any group drifting more than
the tolerance (default 1 ms) is quarantined with the measured drift; groups must
also move forward in time (group k+1 starts after group k).
"""

from __future__ import annotations

from pretrainlab.multimodal.format import BadSample, Sample

NS_PER_MS = 1_000_000


def group_drift_ns(sample: Sample) -> dict[int, int]:
    """Drift (ns) of every group of a sample."""
    return {g: max(s.t_ns for s in segs) - min(s.t_ns for s in segs) for g, segs in sample.groups.items()}


def check_sync(sample: Sample, tolerance_ns: int = NS_PER_MS) -> BadSample | None:
    """None when every group is in sync and groups are in time order, else the quarantine entry."""
    for g, drift in group_drift_ns(sample).items():
        if drift > tolerance_ns:
            return BadSample(
                sample.id, sample.line, "out_of_sync",
                f"time-slice group {g} spans {drift / NS_PER_MS:.3f} ms, over the {tolerance_ns / NS_PER_MS:g} ms tolerance "
                "(multimodal.sync_tolerance_ms)",
                {"group": g, "drift_ns": drift, "tolerance_ns": tolerance_ns},
            )
    starts = [(g, min(s.t_ns for s in segs)) for g, segs in sample.groups.items()]
    for (g0, t0), (g1, t1) in zip(starts, starts[1:]):
        if t1 <= t0:
            return BadSample(sample.id, sample.line, "time_order",
                             f"group {g1} starts at {t1} ns, not after group {g0} ({t0} ns)", {"group": g1})
    return None
