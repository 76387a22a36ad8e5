"""Static HTML report and the SVG chart helper."""

from __future__ import annotations

import json
import math
import re

import pytest

from pretrainlab.errors import UserError
from pretrainlab.fsio import append_jsonl
from pretrainlab.htmlkit import nice_ticks, svg_line_chart
from pretrainlab.monitor.report import write_report


def test_svg_line_chart_axes_legend_and_bad_values():
    svg = svg_line_chart({"train": [(0, 5.0), (1, float("nan")), (2, 4.0), (3, 3.5)], "val <b>": [(2, 4.2)]},
                         "Loss", "step", "loss")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<polyline") == 1  # the NaN splits the train line; single points are markers
    assert "val &lt;b&gt;" in svg and "<b>" not in svg  # legend escaped
    assert ">step<" in svg and ">loss<" in svg
    assert len(re.findall(r'class="tk"', svg)) >= 4  # tick labels on both axes
    assert "nan" not in svg.lower()  # no NaN coordinates leak into the SVG


def test_svg_line_chart_empty_and_log_scale():
    assert "no data" in svg_line_chart({}, "t", "x", "y")
    assert "no data" in svg_line_chart({"a": [(0, float("inf")), (1, float("nan"))]}, "t", "x", "y")
    assert "no data" in svg_line_chart({"a": [(0, -1.0), (1, 0.0)]}, "t", "x", "y", log_y=True)
    svg = svg_line_chart({"a": [(i, 10.0 ** (i - 3)) for i in range(8)]}, "t", "x", "y", log_y=True)
    assert "<polyline" in svg and "(log)" in svg
    assert "1k" in svg or "1e+03" in svg  # decade ticks
    one = svg_line_chart({"a": [(5, 2.0)]}, "t", "x", "y")
    assert "<circle" in one


def test_nice_ticks():
    assert nice_ticks(0, 10, 5) == [0, 2, 4, 6, 8, 10]
    t = nice_ticks(0.013, 0.047, 5)
    assert all(0.013 <= x <= 0.047 for x in t) and len(t) >= 3


def make_run(tmp_path, with_eval=True):
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model:\n  d_model: 32\n  n_layers: 2\n  n_heads: 4\n  vocab_size: 300\n"
                                     "train:\n  steps: 100\n  seq_len: 16\n")
    (run / "meta.json").write_text(json.dumps({
        "git_sha": "abc123", "dirty": False, "host": "box", "params": {"total": 123456},
        "peak_flops": 1e11, "peak_flops_source": "measured fp32 matmul on CPU"}))
    for step in range(0, 101, 10):
        append_jsonl(run / "metrics.jsonl", {
            "kind": "train", "step": step, "tokens": step * 512, "loss": 6.0 * math.exp(-step / 50) + 1,
            "lr": 1e-3, "grad_norm": 1.0 / (step + 1), "tokens_per_s": 5000.0, "mfu": 0.1, "elapsed_s": step * 0.1})
        if step % 50 == 0:
            append_jsonl(run / "metrics.jsonl", {"kind": "val", "step": step, "tokens": step * 512,
                                                 "val_loss": 6.5 - step / 40, "val_loss/code": 6.0 - step / 40,
                                                 "val_loss/docs": 7.0 - step / 40})
    append_jsonl(run / "events.jsonl", {"time": 1.7e9, "step": 50, "event": "checkpoint", "path": "checkpoints/step_00000050"})
    if with_eval:
        (run / "eval.json").write_text(json.dumps({
            "step": 100, "seconds": 1.5,
            "perplexity": {"code": {"loss": 2.0, "ppl": 7.39, "tokens": 100},
                           "empty": {"loss": None, "ppl": None, "tokens": 0, "skipped": "empty"},
                           "overall": {"loss": 2.0, "ppl": 7.39, "tokens": 100}},
            "samples": [{"prompt": "<script>alert(1)</script>", "greedy": " & <b>x</b>", "sampled": "y"}]}))
    return run


def test_report_on_synthetic_run(tmp_path):
    run = make_run(tmp_path)
    out = write_report(run)
    assert out == run / "report.html"
    text = out.read_text()
    assert text.count("<svg") >= 6
    assert "Validation loss per source" in text
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert not re.search(r"https?://", text)
    assert "first <b>6.5</b>" in text and "final <b>4</b>" in text
    assert "abc123" in text and "checkpoint" in text and "measured fp32 matmul on CPU" in text
    assert "7.39" in text and "empty" in text  # per-source eval table, skipped source listed


def test_report_on_partial_run(tmp_path):
    run = tmp_path / "partial"
    run.mkdir()
    (run / "config.yaml").write_text("train:\n  steps: 10\n")
    text = write_report(run).read_text()
    assert "No metrics logged yet" in text and "No eval.json" in text and "no data" in text
    append_jsonl(run / "metrics.jsonl", {"kind": "train", "step": 1, "loss": float("nan"), "lr": 0.0})
    (run / "metrics.jsonl").open("a").write('{"kind": "train", "st')  # torn last line
    text = write_report(run).read_text()
    assert "<svg" in text


def test_report_user_errors(tmp_path):
    with pytest.raises(UserError):
        write_report(tmp_path / "missing")
    (tmp_path / "x").mkdir()
    with pytest.raises(UserError):
        write_report(tmp_path / "x")
