"""Go/No-Go gates: YAML criteria on a run's artifacts -> verdict table, JSON, exit 0 (Go) / 1 (No-Go)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from pretrainlab.cli import main
from pretrainlab.errors import ConfigError
from pretrainlab.fsio import append_jsonl
from pretrainlab.gates import check_gates

GATES_DIR = Path(__file__).resolve().parents[1] / "configs" / "gates"


def make_run(root: Path, name="run", steps=200, slope=-0.004, nan_at=None, mfu=0.42, rollback_lost=0.0,
             moe=None, tasks=None) -> Path:
    """A fixture run directory: one train record per step, a validation every 50, events, meta, eval."""
    run = root / name
    run.mkdir(parents=True)
    rng = random.Random(0)
    (run / "config.yaml").write_text(f"train:\n  steps: {steps}\n")
    manifest = root / f"{name}-tokens.json"
    manifest.write_text(json.dumps({"tokens_per_s": 2_000_000}))
    (run / "meta.json").write_text(json.dumps({"peak_flops": 1e15, "peak_flops_source": "datasheet",
                                               "tokens_manifest": str(manifest)}))
    t0 = 1_700_000_000.0
    append_jsonl(run / "events.jsonl", {"time": t0, "step": 0, "event": "start"})
    for step in range(1, steps + 1):
        loss = 6.0 + slope * step + rng.gauss(0, 0.01)
        rec = {"kind": "train", "step": step, "loss": math.nan if step == nan_at else loss, "time": t0 + step,
               "tokens_per_s": 100_000.0, "mfu": mfu, "elapsed_s": float(step)}
        if moe:
            rec.update(moe)
        append_jsonl(run / "metrics.jsonl", rec)
        if step % 50 == 0:
            append_jsonl(run / "metrics.jsonl", {"kind": "val", "step": step, "val_loss": loss + 0.05})
    if rollback_lost:
        append_jsonl(run / "events.jsonl", {"time": t0 + 100, "step": 90, "event": "rollback", "lost_s": rollback_lost})
    append_jsonl(run / "events.jsonl", {"time": t0 + steps, "step": steps, "event": "end"})
    if tasks:
        (run / "eval.json").write_text(json.dumps({"step": steps, "tasks": tasks, "perplexity": {}}))
    return run


def write_gates(tmp_path, criteria, name="g") -> Path:
    import yaml

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "criteria": criteria}))
    return path


BASIC = [{"check": "no_nonfinite_loss"}, {"check": "loss_decreasing", "last_fraction": 0.5, "alpha": 0.01},
         {"check": "mfu", "min": 0.3}, {"check": "val_ppl", "max": 1000}, {"check": "downtime_fraction", "max": 0.05},
         {"check": "tokens_per_s", "min": 50_000}, {"check": "data_throughput", "min": 1.0}]


def test_a_healthy_run_is_go_with_exit_0_and_a_json_verdict(tmp_path, capsys):
    run = make_run(tmp_path)
    gates = write_gates(tmp_path, BASIC)
    assert main(["gates", "check", str(run), "--gates", str(gates)]) == 0
    verdict = json.loads((run / "gates" / "g.json").read_text())
    assert verdict["verdict"] == "Go"
    assert [r["status"] for r in verdict["results"]] == ["pass"] * len(BASIC)
    slope = verdict["results"][1]
    assert slope["measured"] == pytest.approx(-4.0, abs=0.2)  # per 1k steps
    assert "one-sided p=" in slope["evidence"]
    out = capsys.readouterr()
    assert "Go" in out.out + out.err


def test_nan_flat_loss_low_mfu_and_downtime_each_fail_and_exit_1(tmp_path):
    run = make_run(tmp_path, slope=0.0, nan_at=120, mfu=0.1, rollback_lost=20.0)
    gates = write_gates(tmp_path, BASIC)
    assert main(["gates", "check", str(run), "--gates", str(gates), "--out", str(tmp_path / "v.json")]) == 1
    verdict = json.loads((tmp_path / "v.json").read_text())
    status = {r["criterion"]: r["status"] for r in verdict["results"]}
    assert verdict["verdict"] == "No-Go"
    assert status == {"no_nonfinite_loss": "fail", "loss_decreasing": "fail", "mfu": "fail", "val_ppl": "pass",
                      "downtime_fraction": "fail", "tokens_per_s": "pass", "data_throughput": "pass"}
    down = next(r for r in verdict["results"] if r["criterion"] == "downtime_fraction")
    assert down["measured"] == pytest.approx(20 / 200)


def test_missing_data_fails_unless_the_criterion_may_be_skipped(tmp_path):
    run = make_run(tmp_path)
    crit = [{"check": "moe_cv", "max": 0.5, "when_missing": "skip"}, {"check": "moe_drop_rate", "max": 0.01}]
    verdict = check_gates(run, write_gates(tmp_path, crit))
    assert [r["status"] for r in verdict["results"]] == ["skip", "fail"]
    assert verdict["results"][1]["evidence"].startswith("missing: no train records with moe/drop_rate")


def test_moe_balance_and_task_accuracy_criteria(tmp_path):
    run = make_run(tmp_path, moe={"moe/cv_max": 0.2, "moe/drop_rate": 0.02},
                   tasks={"cloze": {"acc": 0.41, "n": 200, "chance": 0.25}})
    crit = [{"check": "moe_cv", "max": 0.5}, {"check": "moe_drop_rate", "max": 0.01},
            {"check": "task_accuracy", "task": "cloze", "min": "chance"},
            {"check": "task_accuracy", "task": "cloze", "min": 0.5, "name": "cloze vs 0.5"}]
    verdict = check_gates(run, write_gates(tmp_path, crit))
    assert [(r["criterion"], r["status"]) for r in verdict["results"]] == [
        ("moe_cv", "pass"), ("moe_drop_rate", "fail"), ("task_accuracy", "pass"), ("cloze vs 0.5", "fail")]


def test_a_bad_gate_file_is_one_clear_error(tmp_path, capsys):
    run = make_run(tmp_path)
    bad = write_gates(tmp_path, [{"check": "mfuu", "min": 0.3}], name="bad")
    assert main(["gates", "check", str(run), "--gates", str(bad)]) == 2
    assert "unknown check 'mfuu'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="'min' must be a number"):
        check_gates(run, write_gates(tmp_path, [{"check": "mfu", "min": "high"}], name="bad2"))
    assert main(["gates", "check", str(tmp_path / "nope"), "--gates", str(bad)]) == 2


@pytest.mark.parametrize("name", ["foundation", "scaling_validation", "mid_run_health"])
def test_the_shipped_gate_files_evaluate_on_a_run(tmp_path, name):
    run = make_run(tmp_path, mfu=0.55, tasks={"cloze": {"acc": 0.4, "n": 100, "chance": 0.25},
                                              "continuation": {"acc": 0.5, "n": 100, "chance": 0.25}})
    verdict = check_gates(run, GATES_DIR / f"{name}.yaml")
    assert verdict["source"] and verdict["results"]
    # The fixture is healthy except its validation PPL (exp(~5.3) ~ 200 > 20).
    failed = [r["criterion"] for r in verdict["results"] if r["status"] == "fail"]
    assert failed == (["val_ppl"] if name == "scaling_validation" else [])
