"""benchmarks/gpu_suite.py on the CPU: its --dry mode runs every step it can and records why the rest cannot run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"


def run_suite(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SUITE), *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_the_dry_run_measures_what_the_cpu_can_and_skips_the_cuda_parts_with_their_reason(tmp_path):
    done = run_suite("--dry", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = json.loads((tmp_path / "gpu_suite.json").read_text())
    steps = data["steps"]
    assert list(steps) == ["environment", "tests", "dense", "moe", "attention", "fp8"]
    assert steps["environment"]["status"] == "passed"  # every requirement of pretrainlab[...] installed is met
    cases = steps["tests"]["cases"]
    assert len(cases) >= 6 and all(c["outcome"] == "skipped" and "GPU" in c["reason"] for c in cases)
    for name in ("dense", "moe"):
        figures = steps[name]["figures"]
        assert steps[name]["status"] == "measured" and figures["ours_tokens_per_s"] > 0 and figures["peer_tokens_per_s"] > 0
        assert steps[name]["met"] is None  # targets are judged on a GPU only
    assert steps["attention"]["doc_mask_kernel"].startswith("Tensor (SDPA")  # no FlexAttention backward on the CPU
    assert steps["fp8"]["status"] == "skipped" and "compute capability" in steps["fp8"]["reason"]
    assert steps["fp8"]["figures"]["bf16_final_loss"] > 0  # its bf16 half ran
    table = (tmp_path / "gpu_suite.md").read_text()
    assert "| dense | measured |" in table and "| fp8 | skipped |" in table and "needs a CUDA GPU" in table


def test_without_a_gpu_the_real_run_refuses_in_one_line(tmp_path):
    done = run_suite("--out", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: no CUDA GPU here; run with --dry on the CPU (or on the lent GPU machine)"]


def test_steps_that_would_overrun_the_time_budget_are_skipped_and_say_so(tmp_path):
    done = run_suite("--dry", "--budget-s", "0", "--only", "dense,fp8", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    steps = json.loads((tmp_path / "gpu_suite.json").read_text())["steps"]
    assert steps["dense"]["status"] == steps["fp8"]["status"] == "skipped"
    assert "time budget" in steps["dense"]["reason"] and "moe" not in steps


def test_an_unknown_step_is_refused():
    done = run_suite("--dry", "--only", "dense,warp", "--out", "unused")
    assert done.returncode == 2 and "warp" in done.stderr
