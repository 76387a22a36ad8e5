"""The straggler rule: a rank that stays slower than the others by a factor, for several log steps.

In synchronous data parallelism every rank waits for the slowest one at the
gradient all-reduce, so their wall-clock step times are equal; what differs is
the time each rank works on its own before it first waits for the others (data
loading, forwards, the backwards of accumulated micro-batches). The monitor
(``monitor/cluster.py``) measures that time per rank and gathers it at log
steps; ``StragglerRule.update`` compares each rank with the median of the other
ranks (with many ranks that is the median over all; with two it is the other one).
A rank above ``factor`` × median for ``patience`` consecutive log steps is
reported once, and again only after it has been back under the threshold.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


@dataclass
class Straggler:
    rank: int
    seconds: float
    median: float
    ratio: float
    steps: int  # consecutive log steps over the threshold


@dataclass
class StragglerRule:
    factor: float = 1.5
    patience: int = 3
    streak: dict[int, int] = field(default_factory=dict)
    firing: set[int] = field(default_factory=set)

    def update(self, seconds: list[float]) -> list[Straggler]:
        """``seconds[r]``: rank r's time this log step; returns the ranks that just became stragglers (vs the others' median)."""
        if sum(math.isfinite(s) for s in seconds) < 2:
            return []
        found = []
        for rank, s in enumerate(seconds):
            others = [o for r, o in enumerate(seconds) if r != rank and math.isfinite(o)]
            median = statistics.median(others) if others else math.nan
            slow = math.isfinite(s) and median > 0 and s > self.factor * median
            if not slow:
                self.streak.pop(rank, None)
                self.firing.discard(rank)
                continue
            self.streak[rank] = self.streak.get(rank, 0) + 1
            if self.streak[rank] >= self.patience and rank not in self.firing:
                self.firing.add(rank)
                found.append(Straggler(rank, s, median, s / median, self.streak[rank]))
        return found
