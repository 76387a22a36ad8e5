"""`pretrainlab experiments sweep -c BASE --grid key=v1,v2 ...`: train every combination, compare, conclude.

Every combination of the grid values is a variant of the base config (run
sequentially or ``experiments.parallel`` at a time). The record follows the
plan's experiment template: setup, fixed parameters, a results table (final
validation PPL, steps and tokens to a target loss, tokens/s, MFU, guard
events), overlaid curves, and a conclusion naming the best configuration with
its margin over the runner-up, set against seed-to-seed noise measured by
re-running the best configuration with other seeds. Data-mixture comparisons
are grids over ``mix.weights`` (dict values: ``--grid 'mix.weights={a: 3, b: 1},{a: 1, b: 3}'``).
"""

from __future__ import annotations

import itertools
import math
import re

import yaml

from pretrainlab.config import ProjectConfig, load_config
from pretrainlab.errors import ConfigError, UserError
from pretrainlab.experiments.diagnose import final_loss, series, steps_to_reach
from pretrainlab.experiments.render import Record, fmt
from pretrainlab.experiments.runner import Variant, require_shards, run_variants
from pretrainlab.fsio import atomic_write_json
from pretrainlab.progress import console

HIGHER_IS_BETTER = {"tokens_per_s"}


def split_values(text: str) -> list[str]:
    """Split ``v1,v2`` at commas outside brackets/braces, so dict and list values keep their commas."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [v for v in out if v]


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    if not items:
        raise UserError("sweep needs at least one --grid KEY=V1,V2 (e.g. --grid optim.lr=1e-4,3e-4)")
    grid, seen = [], set()
    for item in items:
        if "=" not in item:
            raise UserError(f"--grid {item!r}: expected KEY=V1,V2,... e.g. --grid optim.lr=1e-4,3e-4")
        key, raw = item.split("=", 1)
        key = key.strip()
        values = split_values(raw)
        if not key or not values:
            raise UserError(f"--grid {item!r}: needs a key and at least one value, e.g. --grid optim.lr=1e-4,3e-4")
        if key in seen:
            raise UserError(f"--grid {key} is given twice; list all its values in one --grid {key}=V1,V2")
        seen.add(key)
        grid.append((key, values))
    return grid


def _short(key: str, value: str) -> str:
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, dict):
        value = "-".join(f"{k}{v:g}" if isinstance(v, (int, float)) else f"{k}{v}" for k, v in parsed.items())
    elif isinstance(parsed, float):
        value = f"{parsed:g}"
    return re.sub(r"[^A-Za-z0-9_.-]", "", f"{key.split('.')[-1]}-{value}")[:80]


def combinations(grid: list[tuple[str, list[str]]]) -> list[tuple[str, list[str], dict[str, str]]]:
    """(variant name, overrides, {key: value}) for every combination, in grid order."""
    out = []
    for values in itertools.product(*[vals for _, vals in grid]):
        pairs = dict(zip([k for k, _ in grid], values))
        name = "_".join(_short(k, v) for k, v in pairs.items())
        out.append((name, [f"{k}={v}" for k, v in pairs.items()], pairs))
    return out


def _metrics(result: dict, target: float, smooth: int) -> dict:
    losses = series(result["steps"], "loss")
    reach = steps_to_reach(losses, target, smooth)
    val = result.get("final_val_loss")
    per_source = {k.split("/", 1)[1]: v for k, v in (result["val"][-1] if result["val"] else {}).items()
                  if k.startswith("val_loss/")}
    return {
        "final_val_loss": val,
        "final_val_ppl": math.exp(val) if val is not None and math.isfinite(val) and val < 50 else math.inf,
        "final_train_loss": final_loss(losses, smooth),
        "steps_to_target": reach,
        "tokens_to_target": reach * result["global_batch_tokens"] if reach else None,
        "tokens_per_s": result.get("tokens_per_s"),
        "mfu": result.get("mfu"),
        "guard_events": len(result.get("guard_events") or []),
        "val_per_source": per_source,
        "error": result.get("error"),
    }


def _sort_key(metric: str):
    def key(m: dict) -> float:
        v = m[metric]
        if v is None or not math.isfinite(v):
            return math.inf  # never reached / diverged: last
        return -v if metric in HIGHER_IS_BETTER else v
    return key


def rank(rows: list[dict], metric: str) -> list[dict]:
    """Rows best first by ``metric`` (lower is better, except tokens_per_s)."""
    return sorted(rows, key=lambda r: _sort_key(metric)(r["metrics"]))


def run_sweep(base: ProjectConfig, grid_items: list[str]) -> dict:
    ex = base.experiments
    grid = parse_grid(grid_items)
    combos = combinations(grid)
    for name, overrides, _ in combos:  # every combination must be a valid config before anything trains
        try:
            load_config(None, overrides, base=base.model_dump(mode="json"))
        except ConfigError as err:
            raise UserError(f"sweep combination {name}: {err}") from None
    require_shards(base)
    out = (ex.out or base.workdir / "experiments" / "sweep").resolve()
    console.print(f"sweep: {len(combos)} combinations x {base.train.steps} steps, {ex.parallel} at a time -> {out}")
    results = run_variants(base, [Variant(n, o) for n, o, _ in combos], out, ex.parallel)
    smooth = ex.smooth_steps
    target = ex.target_loss or max((final_loss(series(r["steps"], "loss"), smooth) for r in results
                                    if math.isfinite(final_loss(series(r["steps"], "loss"), smooth))), default=math.nan)
    rows = [{"name": n, "settings": s, "metrics": _metrics(r, target, smooth)} for (n, _, s), r in zip(combos, results)]
    ranked = rank(rows, ex.metric)
    noise = _seed_noise(base, ranked[0], combos, out, target) if ex.seed_repeats and rows else None
    summary = {"metric": ex.metric, "target_loss": target, "grid": grid, "ranked": ranked, "seed_noise": noise,
               "conclusion": conclusion(ranked, ex.metric, noise)}
    rec = build_record(base, grid, results, combos, summary)
    html_path, md_path = rec.write(out)
    atomic_write_json(out / "sweep.json", summary)
    console.print(summary["conclusion"])
    console.print(f"report: {html_path} (markdown: {md_path})")
    return {"out": str(out), "report": str(html_path), "markdown": str(md_path), **summary}


def _seed_noise(base: ProjectConfig, best: dict, combos, out, target: float) -> dict:
    overrides = next(o for n, o, _ in combos if n == best["name"])
    metric = base.experiments.metric
    seeds = [base.train.seed + k for k in range(1, base.experiments.seed_repeats + 1)]
    variants = [Variant(f"{best['name']}_seed{s}", [*overrides, f"train.seed={s}"]) for s in seeds]
    console.print(f"seed-to-seed noise: re-running the best ({best['name']}) with seed(s) {seeds}")
    results = run_variants(base, variants, out, base.experiments.parallel)
    values = [best["metrics"][metric]] + [_metrics(r, target, base.experiments.smooth_steps)[metric] for r in results]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return {"seeds": [base.train.seed, *seeds], "values": values,
            "spread": (max(finite) - min(finite)) if len(finite) == len(values) else math.inf}


def conclusion(ranked: list[dict], metric: str, noise: dict | None) -> str:
    best = ranked[0]
    v = best["metrics"][metric]
    if v is None or not math.isfinite(v):
        return f"No configuration produced a finite {metric}; see the table (runs diverged or never reached the target)."
    text = f"Best: {best['name']} with {metric} {fmt(v)}"
    if len(ranked) < 2:
        return text + " (only one configuration)."
    second = ranked[1]
    v2 = second["metrics"][metric]
    if v2 is None or not math.isfinite(v2):
        return text + f"; the runner-up {second['name']} has no finite {metric}, so the win is clear."
    margin = abs(v2 - v)
    text += f", {fmt(margin)} better than the runner-up {second['name']} ({fmt(v2)})"
    if noise is None:
        return text + "; seed-to-seed noise not measured (experiments.seed_repeats=0), so significance is unknown."
    spread = noise["spread"]
    verdict = "exceeds" if margin > spread else "does NOT exceed"
    return (text + f"; the margin {verdict} the seed-to-seed spread {fmt(spread)} of the best configuration "
            f"over seeds {noise['seeds']}" + ("." if margin > spread else ": treat the two as tied."))


def _fixed_parameters(base: ProjectConfig, grid_keys: set[str]) -> list[str]:
    keys = ["model.d_model", "model.n_layers", "model.n_heads", "optim.name", "optim.lr", "optim.warmup_steps",
            "optim.schedule", "optim.weight_decay", "optim.grad_clip", "train.steps", "train.seq_len",
            "train.global_batch_tokens", "train.precision", "train.seed", "mix.temperature", "mix.weights"]
    data = base.model_dump(mode="json")
    out = []
    for k in keys:
        if k in grid_keys:
            continue
        sec, name = k.split(".")
        out.append(f"{k} = {data[sec][name]}")
    return out


def build_record(base: ProjectConfig, grid, results, combos, summary: dict) -> Record:
    metric = summary["metric"]
    rec = Record(f"Sweep: {' x '.join(k for k, _ in grid)}")
    rec.h("Setup")
    rec.bullets([
        f"model: d_model {base.model.d_model}, {base.model.n_layers} layers; data: {base.train_tokens_dir}",
        "varied: " + "; ".join(f"{k} in {vals}" for k, vals in grid),
        f"ranked by {metric} ({'higher' if metric in HIGHER_IS_BETTER else 'lower'} is better); target loss "
        f"{fmt(summary['target_loss'])} (train loss, {base.experiments.smooth_steps}-step mean)",
    ])
    rec.h("Fixed parameters")
    rec.bullets(_fixed_parameters(base, {k for k, _ in grid}))
    rec.h("Results")
    sources = sorted({s for r in summary["ranked"] for s in r["metrics"]["val_per_source"]})
    show_sources = sources if len(sources) <= 6 else []
    head = ["rank", "config", *[k for k, _ in grid], "final val PPL", "final val loss", "steps to target",
            "tokens to target", "tokens/s", "MFU", "guard events", *[f"val loss {s}" for s in show_sources]]
    rows = []
    for i, r in enumerate(summary["ranked"], 1):
        m = r["metrics"]
        rows.append([i, r["name"], *[r["settings"][k] for k, _ in grid], fmt(m["final_val_ppl"]),
                     fmt(m["final_val_loss"]), m["steps_to_target"] or "never", m["tokens_to_target"] or "never",
                     fmt(m["tokens_per_s"]), f"{100 * (m['mfu'] or 0):.2f}%", m["guard_events"],
                     *[fmt(m["val_per_source"].get(s)) for s in show_sources]])
    rec.table(head, rows)
    rec.chart("train_loss", {n: [(s["tokens"], s["loss"]) for s in r["steps"]] for (n, _, _), r in zip(combos, results)},
              "training loss", "tokens", "loss")
    rec.chart("val_loss", {n: [(v["tokens"], v["val_loss"]) for v in r["val"] if "val_loss" in v]
                           for (n, _, _), r in zip(combos, results)}, "validation loss", "tokens", "val loss")
    if summary["seed_noise"]:
        sn = summary["seed_noise"]
        rec.h("Seed-to-seed noise")
        rec.table(["seed", metric], [[str(s), fmt(v)] for s, v in zip(sn["seeds"], sn["values"])])
    rec.h("Conclusion")
    rec.p(summary["conclusion"])
    return rec
