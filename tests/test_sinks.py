"""Metrics sinks and FLOP/s / MFU helpers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pretrainlab.config import ProjectConfig
from pretrainlab.monitor.flops import gpu_peak_flops, measure_cpu_matmul_flops, mfu, resolve_peak_flops
from pretrainlab.monitor.sinks import JsonlSink, MetricsSink, MultiSink, TensorBoardSink, scalar_tag


def test_jsonl_sink_appends_parseable_lines(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_text('{"kind":"train","step":0,"loss":9.0}\n')
    sink = JsonlSink(path)
    sink.log({"kind": "train", "step": 1, "loss": 3.5, "lr": 1e-3})
    sink.log({"kind": "val", "step": 1, "val_loss": 3.6, "val_loss/man_pages": 3.1})
    sink.close()
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 1]
    assert lines[2]["val_loss/man_pages"] == 3.1


def test_scalar_tags():
    assert scalar_tag("train", "loss") == "train/loss"
    assert scalar_tag("val", "val_loss") == "val/loss"
    assert scalar_tag("val", "val_loss/man_pages") == "val/loss/man_pages"


def test_tensorboard_sink_writes_event_file(tmp_path):
    pytest.importorskip("tensorboard")
    sink = TensorBoardSink(tmp_path / "tb")
    assert sink.enabled
    for step in range(3):
        sink.log({"kind": "train", "step": step, "loss": 4.0 - step, "lr": 1e-3, "mfu": float("nan"), "note": "x"})
    sink.log({"kind": "val", "step": 2, "val_loss": 3.0, "val_loss/src": 2.5})
    sink.close()
    files = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert files and files[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/loss", "val/loss/src"} <= tags
    assert [e.value for e in acc.Scalars("train/loss")] == [4.0, 3.0, 2.0]


def test_multisink_fans_out_and_closes_all(tmp_path):
    class Recorder(MetricsSink):
        def __init__(self):
            self.records, self.closed = [], False

        def log(self, record):
            self.records.append(record)

        def close(self):
            self.closed = True

    a, b = Recorder(), Recorder()
    with MultiSink([a, b, JsonlSink(tmp_path / "m.jsonl")]) as multi:
        multi.log({"kind": "train", "step": 1, "loss": 1.0})
    assert a.records == b.records == [{"kind": "train", "step": 1, "loss": 1.0}]
    assert a.closed and b.closed
    assert (tmp_path / "m.jsonl").read_text().count("\n") == 1


def test_gpu_peak_table():
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989.5e12
    assert gpu_peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert gpu_peak_flops("NVIDIA H200", "bf16") == 989.5e12
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3", "fp8") == 1979e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB", "fp8") is None
    assert gpu_peak_flops("Some Other GPU", "bf16") is None


def test_cpu_peak_measured_and_configured_override():
    rate = measure_cpu_matmul_flops(n=256, repeats=2)
    assert 1e8 < rate < 1e14
    cfg = ProjectConfig()
    value, how = resolve_peak_flops(cfg, "cpu")
    assert value > 0 and "measured" in how and "CPU" in how
    cfg = ProjectConfig.model_validate({"log": {"peak_flops": 1e12}})
    assert resolve_peak_flops(cfg, torch.device("cpu")) == (1e12, "configured (log.peak_flops)")


def test_mfu():
    assert mfu(1000.0, 6e6, 1.2e10) == pytest.approx(0.5)
    assert math.isnan(mfu(1000.0, 6e6, None))
    assert math.isnan(mfu(1000.0, 6e6, 0.0))
