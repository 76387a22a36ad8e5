"""What one run directory holds, read fresh on each call; and the report's section registry.

``RunData`` loads a run's metrics, events, config and meta (missing or broken
files read as empty) for the dashboard and the static report. A report section
is a function of a ``RunData`` returning HTML ("" leaves it out); packages
register theirs with ``register_section`` so the report imports none of them
(``pretrainlab.reporting`` loads the sections of every package).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from pretrainlab.fsio import iter_jsonl, read_json

RUN_FILES = ("metrics.jsonl", "events.jsonl", "config.yaml")


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in RUN_FILES)


def discover_runs(root: Path) -> dict[str, Path]:
    """Run name -> directory: ``root`` itself if it is a run, else its run subfolders."""
    root = Path(root)
    if is_run_dir(root):
        return {root.resolve().name: root}
    return {p.name: p for p in sorted(root.iterdir()) if is_run_dir(p)} if root.is_dir() else {}


class RunData:
    """What the views need from one run directory, read fresh on every request."""

    def __init__(self, name: str, path: Path):
        self.name, self.path = name, path
        metrics = list(iter_jsonl(path / "metrics.jsonl")) if (path / "metrics.jsonl").is_file() else []
        self.train = [r for r in metrics if r.get("kind") == "train"]
        self.val = [r for r in metrics if r.get("kind") == "val"]
        self.events = list(iter_jsonl(path / "events.jsonl")) if (path / "events.jsonl").is_file() else []
        self.evals = [r for r in metrics if r.get("kind") == "eval"]
        # each rank's host, from the newest "ranks" record (monitor/cluster.py)
        self.hosts = next(([str(h) for h in r.get("hosts") or []] for r in reversed(metrics) if r.get("kind") == "ranks"), [])
        try:
            config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            config = None
        self.config = config if isinstance(config, dict) else {}
        try:
            meta = read_json(path / "meta.json")
        except (OSError, ValueError):
            meta = None
        self.meta = meta if isinstance(meta, dict) else {}

    @property
    def planned_steps(self):
        return (self.config.get("train") or {}).get("steps")

    def seconds_per_step(self) -> float | None:
        recs = [r for r in self.train[-50:] if isinstance(r.get("time"), (int, float))]
        rates = [(b["time"] - a["time"]) / (b["step"] - a["step"]) for a, b in zip(recs, recs[1:])
                 if b["step"] > a["step"] and b["time"] > a["time"]]
        return statistics.median(rates) if rates else None

    def eta_s(self) -> float | None:
        rate, steps = self.seconds_per_step(), self.planned_steps
        if rate is None or not steps or not self.train:
            return None
        return max(0, steps - self.train[-1]["step"]) * rate

    def status(self, now: float | None = None) -> str:
        last = next((e["event"] for e in reversed(self.events) if e.get("event") in
                     ("end", "pause", "stopped", "interrupted", "start", "resume", "rollback", "checkpoint")), None)
        if last in ("end",):
            return "finished"
        if last in ("pause", "stopped", "interrupted"):
            return {"pause": "paused", "stopped": "stopped", "interrupted": "interrupted"}[last]
        times = [r["time"] for r in self.train[-1:] if isinstance(r.get("time"), (int, float))]
        times += [e["time"] for e in self.events[-1:] if isinstance(e.get("time"), (int, float))]
        if not times:
            return "starting"
        quiet = (now or time.time()) - max(times)
        rate = self.seconds_per_step() or 0.0
        return "running" if quiet < max(120.0, 20 * rate) else "silent"

    def has_moe(self) -> bool:
        return any(k.startswith("moe/") for r in self.train[-5:] for k in r)


@dataclass(frozen=True)
class ReportSection:
    name: str
    order: float  # position in the page; the report's own sections use 10, 20, ... (see monitor/report.py)
    render: Callable[[RunData], str]


_SECTIONS: dict[str, ReportSection] = {}


def register_section(name: str, order: float) -> Callable[[Callable[[RunData], str]], Callable[[RunData], str]]:
    """Decorator: add ``render`` to every run report at ``order`` (a second registration of ``name`` replaces it)."""
    def add(render: Callable[[RunData], str]) -> Callable[[RunData], str]:
        _SECTIONS[name] = ReportSection(name, order, render)
        return render
    return add


def report_sections() -> list[ReportSection]:
    """The registered sections in page order."""
    return sorted(_SECTIONS.values(), key=lambda s: s.order)
