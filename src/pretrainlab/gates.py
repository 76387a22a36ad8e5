"""Go/No-Go gates: quantified criteria evaluated on a run's artifacts.

``pretrainlab gates check RUN --gates FILE`` reads a YAML gate file::

    name: end of foundation
    source: where the criteria come from
    criteria:
      - check: no_nonfinite_loss
      - check: loss_decreasing
        last_fraction: 0.5     # fit the slope on the last 50% of train records
        alpha: 0.01            # one-sided t-test: slope < 0 with p < alpha
      - check: mfu
        min: 0.30
      - check: moe_cv
        max: 0.5
        when_missing: skip     # n/a (not a failure) for a dense run

and measures each criterion from ``metrics.jsonl`` (+ ``metrics.orphaned.jsonl``),
``events.jsonl``, ``meta.json``, ``eval.json`` and the token manifest. The verdict
is Go when every criterion passes (skipped ones do not count), No-Go otherwise.
Each result row says the threshold, the measured value and the evidence (which
records, how many) so a reviewer can check it.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import yaml
from rich.markup import escape
from rich.table import Table

from pretrainlab.errors import ConfigError, UserError
from pretrainlab.fsio import atomic_write_json, iter_jsonl, read_json
from pretrainlab.monitor.trend import linear_trend
from pretrainlab.progress import console


@dataclass
class Result:
    criterion: str
    threshold: str
    measured: Any
    evidence: str
    status: str  # "pass" | "fail" | "skip"


class Missing(Exception):
    """The run has no data for this criterion (evidence in the message)."""


# --------------------------------------------------------------------------- run artifacts


class RunArtifacts:
    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        if not self.dir.is_dir():
            raise UserError(f"run directory not found: {self.dir}; pass runs/<name> made by `pretrainlab train`")
        if not (self.dir / "metrics.jsonl").is_file():
            raise UserError(f"{self.dir} has no metrics.jsonl; is it a run directory made by `pretrainlab train`?")
        self.metrics = list(iter_jsonl(self.dir / "metrics.jsonl"))
        orphan_path = self.dir / "metrics.orphaned.jsonl"
        self.orphaned = list(iter_jsonl(orphan_path)) if orphan_path.is_file() else []
        ev_path = self.dir / "events.jsonl"
        self.events = list(iter_jsonl(ev_path)) if ev_path.is_file() else []
        self.meta = self._json("meta.json") or {}
        self.eval = self._json("eval.json")
        self.train = [r for r in self.metrics if r.get("kind") == "train"]
        self.val = [r for r in self.metrics if r.get("kind") == "val"]

    def _json(self, name: str) -> dict | None:
        try:
            data = read_json(self.dir / name)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def config(self) -> dict:
        try:
            return yaml.safe_load((self.dir / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            return {}


def _tail(records: list[dict], fraction: float) -> list[dict]:
    n = max(1, math.ceil(len(records) * fraction))
    return records[-n:]


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _values(records: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in records if _num(r.get(key)) and math.isfinite(r[key])]


def _reduce(values: list[float], how: str) -> float:
    return {"last": lambda v: v[-1], "mean": statistics.fmean, "median": statistics.median,
            "min": min, "max": max}[how](values)


# --------------------------------------------------------------------------- measurements
# Each returns (measured value, evidence text); raises Missing when the run has no data.


def m_nonfinite_losses(run: RunArtifacts, p: dict):
    def bad(r):
        v = r.get("loss")
        return isinstance(v, str) or (_num(v) and not math.isfinite(v))

    logged = sum(1 for r in run.train if bad(r))
    orphaned = sum(1 for r in run.orphaned if r.get("kind") == "train" and bad(r))
    skips = sum(1 for e in run.events if e.get("event") == "skip_step" and e.get("reason") == "nonfinite")
    n = max(logged + orphaned, skips)
    return n, (f"{len(run.train)} train records: {logged} non-finite; {orphaned} in metrics.orphaned.jsonl; "
               f"{skips} non-finite skip events")


def m_loss_slope(run: RunArtifacts, p: dict):
    recs = [r for r in run.train if _num(r.get("loss")) and math.isfinite(r["loss"]) and not r.get("skipped")]
    if len(recs) < 3:
        raise Missing(f"{len(recs)} finite train losses; need at least 3")
    tail = _tail(recs, p.get("last_fraction", 0.5))
    tr = linear_trend([r["step"] for r in tail], [r["loss"] for r in tail])
    if tr is None:
        raise Missing("train losses all at one step")
    p["_p"] = tr.p_decrease
    return tr.slope * 1000, (f"OLS on {tr.n} train losses, steps {tail[0]['step']}-{tail[-1]['step']} "
                             f"(last {p.get('last_fraction', 0.5):.0%}): {tr.slope * 1000:.4g}/1k steps, "
                             f"one-sided p={tr.p_decrease:.3g}, change {100 * tr.rel_change:+.2f}%")


def m_val_ppl(run: RunArtifacts, p: dict):
    which = p.get("which", "final")
    if p.get("source", "auto") in ("auto", "eval") and run.eval and _num((run.eval.get("perplexity") or {}).get("overall", {}).get("ppl")):
        ov = run.eval["perplexity"]["overall"]
        if which == "final" or p.get("source") == "eval":
            return ov["ppl"], f"eval.json overall ppl at step {run.eval.get('step')} on {ov.get('tokens')} tokens"
    vals = [r for r in run.val if _num(r.get("val_loss")) and math.isfinite(r["val_loss"])]
    if not vals:
        raise Missing("no validation records (kind=val) and no eval.json")
    rec = min(vals, key=lambda r: r["val_loss"]) if which == "best" else vals[-1]
    return math.exp(rec["val_loss"]), f"{which} of {len(vals)} validation records: val_loss {rec['val_loss']:.4f} at step {rec['step']}"


def _median_metric(run: RunArtifacts, p: dict, key: str):
    recs = [r for r in run.train if _num(r.get(key)) and math.isfinite(r[key])]
    if not recs:
        raise Missing(f"no train records with {key}")
    tail = _tail(recs, p.get("last_fraction", 0.5))
    return statistics.median(r[key] for r in tail), (
        f"median of {len(tail)} records (last {p.get('last_fraction', 0.5):.0%}, steps "
        f"{tail[0]['step']}-{tail[-1]['step']})")


def m_mfu(run, p):
    v, ev = _median_metric(run, p, "mfu")
    return v, ev + f"; peak {run.meta.get('peak_flops', '?')} FLOP/s ({run.meta.get('peak_flops_source', '?')})"


def m_tokens_per_s(run, p):
    return _median_metric(run, p, "tokens_per_s")


def m_data_throughput(run: RunArtifacts, p: dict):
    """Data-pipeline tokens/s over the tokens/s training consumes (measured, or planned)."""
    pipe = p.get("pipeline_tokens_per_s")
    src = "given"
    if pipe is None:
        path = Path(run.meta.get("tokens_manifest") or "")
        try:
            manifest = read_json(path)
        except (OSError, ValueError):
            raise Missing(f"no token manifest at {path or '(meta.json has no tokens_manifest)'}") from None
        pipe = manifest.get("tokens_per_s")
        src = f"tokenize throughput from {path}"
        if not _num(pipe):
            raise Missing(f"{path} records no tokens_per_s")
    need = p.get("planned_tokens_per_s")
    need_src = "planned"
    if need is None:
        need, _ = _median_metric(run, {"last_fraction": 0.5}, "tokens_per_s")
        need_src = "this run's median training tokens/s"
    return pipe / need, f"{src}: {pipe:,.0f} tokens/s vs {need_src}: {need:,.0f} tokens/s"


def m_downtime_fraction(run: RunArtifacts, p: dict):
    """Time lost to rollbacks (redone steps) and restarts (down + redone) over the run's wall time."""
    times = [e["time"] for e in run.events if _num(e.get("time"))] + [r["time"] for r in run.train if _num(r.get("time"))]
    starts = [e["time"] for e in run.events if e.get("event") == "start"]
    if not times or not starts:
        raise Missing("events.jsonl has no start event")
    wall = max(times) - min(starts)
    lost_rb = sum(e.get("lost_s", 0.0) for e in run.events if e.get("event") == "rollback")
    ckpt_time = {}
    lost_rs, prev, restarts = 0.0, None, 0
    for e in run.events:
        if e.get("event") == "checkpoint":
            ckpt_time[e.get("path")] = e["time"]
        if e.get("event") == "resume" and prev is not None and prev.get("event") != "end":
            t0 = ckpt_time.get(e.get("checkpoint"), prev["time"])
            lost_rs += max(0.0, e["time"] - t0)
            restarts += 1
        prev = e
    if wall <= 0:
        raise Missing("the run's wall time is zero")
    n_rb = sum(1 for e in run.events if e.get("event") == "rollback")
    return (lost_rb + lost_rs) / wall, (f"{n_rb} rollbacks lost {lost_rb:.1f} s, {restarts} restarts lost "
                                        f"{lost_rs:.1f} s, of {wall:.1f} s wall time")


def m_metric(run: RunArtifacts, p: dict):
    key = p.get("key")
    if not key:
        raise ConfigError("check 'metric' needs key: <metrics.jsonl key>")
    kind = p.get("kind", "train")
    recs = [r for r in run.metrics if r.get("kind") == kind]
    tail = _tail(recs, p.get("last_fraction", 1.0)) if recs else []
    vals = _values(tail, key)
    if not vals:
        raise Missing(f"no {kind} records with {key}")
    how = p.get("reduce", "mean")
    return _reduce(vals, how), f"{how} of {len(vals)} {kind} records of {key} (last {p.get('last_fraction', 1.0):.0%})"


def m_moe_cv(run, p):
    return m_metric(run, {"key": "moe/cv_max", "reduce": "mean", "last_fraction": 0.5, **p})


def m_moe_drop_rate(run, p):
    return m_metric(run, {"key": "moe/drop_rate", "reduce": "mean", "last_fraction": 0.5, **p})


def m_task_accuracy(run: RunArtifacts, p: dict):
    task, metric = p.get("task"), p.get("metric", "acc")
    if not task:
        raise ConfigError("check 'task_accuracy' needs task: <name in eval.json tasks>")
    tasks = (run.eval or {}).get("tasks") or {}
    if task not in tasks or not _num(tasks[task].get(metric)):
        raise Missing(f"eval.json has no {metric} for task {task!r} (run `pretrainlab eval` with tasks)")
    r = tasks[task]
    base = p.get("baseline", p.get("min"))
    if base == "chance" or (base is None and "baseline_run" not in p):
        p["min"] = r.get("chance")
        base_txt = f"chance {r.get('chance')}"
    elif "baseline_run" in p:
        other = RunArtifacts(Path(p["baseline_run"]))
        ot = ((other.eval or {}).get("tasks") or {}).get(task, {})
        if not _num(ot.get(metric)):
            raise Missing(f"baseline run {p['baseline_run']} has no {metric} for {task!r}")
        p["min"] = ot[metric]
        base_txt = f"baseline run {other.dir.name}: {ot[metric]:.4f}"
    else:
        p["min"] = float(base)
        base_txt = f"baseline {base}"
    return r[metric], f"eval.json {task} {metric} on {r.get('n')} examples vs {base_txt}"


def m_projected_hours(run: RunArtifacts, p: dict):
    """Planned steps x the median seconds per step (from the train records' timestamps; downtime excluded)."""
    recs = [r for r in run.train if _num(r.get("time"))]
    steps = (run.config().get("train") or {}).get("steps")
    rates = [(b["time"] - a["time"]) / (b["step"] - a["step"]) for a, b in zip(recs, recs[1:])
             if b["step"] > a["step"] and b["time"] > a["time"]]
    if not rates or not steps:
        raise Missing("no timestamped train records or no train.steps in config.yaml")
    rate = statistics.median(rates)
    return rate * steps / 3600.0, f"median {rate:.3g} s/step over {len(rates)} intervals x {steps} planned steps"


CHECKS: dict[str, tuple[Callable, str, str]] = {
    # name: (measure, default direction "max"/"min"/"custom", default threshold)
    "no_nonfinite_loss": (m_nonfinite_losses, "max", 0),
    "loss_decreasing": (m_loss_slope, "custom", None),
    "val_ppl": (m_val_ppl, "max", None),
    "mfu": (m_mfu, "min", None),
    "tokens_per_s": (m_tokens_per_s, "min", None),
    "data_throughput": (m_data_throughput, "min", 1.0),
    "downtime_fraction": (m_downtime_fraction, "max", None),
    "moe_cv": (m_moe_cv, "max", None),
    "moe_drop_rate": (m_moe_drop_rate, "max", None),
    "task_accuracy": (m_task_accuracy, "min", None),
    "projected_hours": (m_projected_hours, "max", None),
    "metric": (m_metric, "minmax", None),
}
_KNOWN = {"check", "name", "min", "max", "when_missing", "last_fraction", "alpha", "which", "source", "key", "kind",
          "reduce", "task", "metric", "baseline", "baseline_run", "pipeline_tokens_per_s", "planned_tokens_per_s"}


# --------------------------------------------------------------------------- evaluation


def load_gates(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"gate file not found: {path}; see configs/gates/ for examples")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML syntax error: {getattr(exc, 'problem', exc)}; fix the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("criteria"), list) or not data["criteria"]:
        raise ConfigError(f"{path}: expected a mapping with a non-empty 'criteria:' list (see configs/gates/)")
    for i, c in enumerate(data["criteria"]):
        where = f"{path}: criteria[{i}]"
        if not isinstance(c, dict) or c.get("check") not in CHECKS:
            got = c.get("check") if isinstance(c, dict) else c
            raise ConfigError(f"{where}: unknown check {got!r}; choose from {sorted(CHECKS)}")
        unknown = sorted(set(c) - _KNOWN)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; valid: {sorted(_KNOWN)}")
        for k in ("min", "max", "alpha", "last_fraction"):
            if k in c and not _num(c[k]) and not (k == "min" and c[k] == "chance"):
                raise ConfigError(f"{where}: '{k}' must be a number, got {c[k]!r}")
        if c.get("when_missing", "fail") not in ("fail", "skip"):
            raise ConfigError(f"{where}: when_missing must be 'fail' or 'skip'")
    return data


def _fmt(v) -> str:
    if not _num(v):
        return str(v)
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def evaluate_criterion(run: RunArtifacts, c: dict) -> Result:
    measure, direction, default = CHECKS[c["check"]]
    params = dict(c)
    label = c.get("name") or c["check"]
    try:
        value, evidence = measure(run, params)
    except Missing as why:
        status = "skip" if c.get("when_missing", "fail") == "skip" else "fail"
        return Result(label, _threshold_text(c, params, direction, default), None, f"missing: {why}", status)
    if direction == "custom":  # loss_decreasing: slope < 0 and significant
        alpha = params.get("alpha", 0.01)
        ok = value < 0 and params["_p"] < alpha
        return Result(label, f"slope < 0, p < {alpha}", round(value, 6), evidence, "pass" if ok else "fail")
    lo = params.get("min", default if direction == "min" else None)
    hi = params.get("max", default if direction == "max" else None)
    if lo is None and hi is None:
        raise ConfigError(f"criterion {label!r} needs a threshold: min: X or max: X")
    ok = (lo is None or value >= lo) and (hi is None or value <= hi)
    return Result(label, _threshold_text(c, params, direction, default), value, evidence, "pass" if ok else "fail")


def _threshold_text(c, params, direction, default) -> str:
    if direction == "custom":
        return f"slope < 0, p < {params.get('alpha', 0.01)}"
    lo = params.get("min", default if direction == "min" else None)
    hi = params.get("max", default if direction == "max" else None)
    parts = ([f">= {_fmt(lo)}"] if lo is not None else []) + ([f"<= {_fmt(hi)}"] if hi is not None else [])
    return " and ".join(parts) or "?"


def check_gates(run_dir: str | Path, gates_file: str | Path, out: str | Path | None = None) -> dict:
    """Evaluate a gate file on a run; writes the verdict JSON and returns it."""
    gates = load_gates(gates_file)
    run = RunArtifacts(Path(run_dir))
    results = [evaluate_criterion(run, c) for c in gates["criteria"]]
    go = all(r.status != "fail" for r in results)
    verdict = {
        "gate": gates.get("name") or Path(gates_file).stem,
        "source": gates.get("source"),
        "run": str(run.dir.resolve()),
        "gates_file": str(Path(gates_file).resolve()),
        "time": time.time(),
        "verdict": "Go" if go else "No-Go",
        "results": [asdict(r) for r in results],
    }
    out = Path(out) if out else run.dir / "gates" / f"{Path(gates_file).stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, verdict)
    verdict["json"] = str(out)
    return verdict


def print_verdict(verdict: dict) -> None:
    table = Table(title=f"{verdict['gate']} — {Path(verdict['run']).name}")
    for col in ("criterion", "threshold", "measured", "evidence", "result"):
        table.add_column(col, overflow="fold")
    style = {"pass": "green", "fail": "bold red", "skip": "dim"}
    for r in verdict["results"]:
        table.add_row(escape(r["criterion"]), escape(r["threshold"]), escape(_fmt(r["measured"]) if r["measured"] is not None else "-"),
                      escape(r["evidence"]), f"[{style[r['status']]}]{r['status']}[/]")
    console.print(table)
    color = "green" if verdict["verdict"] == "Go" else "bold red"
    console.print(f"verdict: [{color}]{verdict['verdict']}[/]  (JSON: {verdict['json']})")
