"""The whole loop through the real CLI on a tiny budget: every stage, one command."""

import json
import subprocess
import sys

import pytest

from conftest import tiny_overrides


@pytest.mark.slow
def test_quickstart_runs_every_stage_and_writes_a_report(tmp_path):
    workdir = tmp_path / "w"
    args = [sys.executable, "-m", "pretrainlab.cli", "quickstart", "--workdir", str(workdir),
            "--set", "corpus.max_docs_per_source=25", "--set", "train.steps=20", "--set", "train.val_every=10"]
    for o in tiny_overrides(workdir)[1:]:
        if not o.startswith(("train.steps", "train.val_every")):
            args += ["--set", o]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = workdir / "runs" / "quickstart"
    for path in [
        workdir / "raw" / "sources.yaml",
        workdir / "clean" / "manifest.json",
        workdir / "clean" / "quarantine.jsonl",
        workdir / "tokenizer" / "tokenizer.json",
        workdir / "tokens" / "manifest.json",
        run / "config.yaml",
        run / "metrics.jsonl",
        run / "eval.json",
        run / "report.html",
        run / "quickstart.json",
    ]:
        assert path.is_file(), path
    record = json.loads((run / "quickstart.json").read_text())
    assert set(record["timings_s"]) == {
        "corpus build", "data build", "tokenizer train", "data tokenize", "train", "eval", "report"
    }
    assert record["train"]["final_val_loss"] < record["train"]["first_val_loss"]
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["perplexity"]["overall"]["ppl"] > 1
    html = (run / "report.html").read_text()
    assert "<svg" in html and "http://" not in html and "https://" not in html


@pytest.mark.slow
def test_an_empty_corpus_stops_the_pipeline_with_one_line(tmp_path):
    workdir = tmp_path / "w"
    base = [sys.executable, "-m", "pretrainlab.cli"]
    out = subprocess.run(base + ["corpus", "build", "--workdir", str(workdir), "--max-docs-per-source", "3"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    out = subprocess.run(base + ["data", "build", "--workdir", str(workdir), "--min-chars", "100000000",
                                 "--max-chars", "200000000"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert len([l for l in out.stderr.splitlines() if l.startswith("error:")]) == 1
