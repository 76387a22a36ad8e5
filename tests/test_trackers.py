"""Optional trackers (W&B offline, MLflow local store): same metric names, and never fatal."""

import pytest

from pretrainlab.monitor.sinks import MlflowSink, WandbSink
from pretrainlab.recipes import train


@pytest.mark.slow
def test_wandb_offline_and_mlflow_receive_the_same_metric_names(tiny_cfg, monkeypatch):
    pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_cfg("train.steps=4", "log.wandb=true", "log.mlflow=true")
    train(cfg)
    assert list((cfg.run_dir / "wandb").glob("offline-run-*"))
    store = (cfg.run_dir / "mlruns").resolve().as_uri()
    client = mlflow.tracking.MlflowClient(tracking_uri=store, registry_uri=store)
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    assert {"train.loss", "train.grad_norm", "val.loss", "val.loss.code"} <= set(run.data.metrics)
    assert {"train.hw.rank0.rss_gb", "train.hw.rank0.local_s"} <= set(run.data.metrics)  # hardware metrics too
    history = client.get_metric_history(run.info.run_id, "train.loss")
    assert [m.step for m in history] == [1, 2, 3, 4]


def test_a_failing_tracker_warns_once_and_training_continues(tiny_cfg, monkeypatch, capsys):
    import sys
    import types

    broken = types.ModuleType("wandb")

    def init(**kwargs):
        raise RuntimeError("tracker service unavailable")

    broken.init = init
    monkeypatch.setitem(sys.modules, "wandb", broken)
    sink = WandbSink("/nonexistent", "p", "r")
    assert not sink.enabled
    sink.log({"kind": "train", "step": 1, "loss": 1.0})  # a no-op, not an error
    summary = train(tiny_cfg("train.steps=3", "log.wandb=true"))
    assert summary["steps"] == 3
    assert "W&B logging disabled" in capsys.readouterr().err


def test_a_tracker_that_fails_mid_run_is_disabled_not_fatal(tmp_path):
    sink = MlflowSink.__new__(MlflowSink)
    sink.enabled = True

    def boom(metrics, step):
        raise OSError("disk full")

    sink._log = boom
    sink.log({"kind": "train", "step": 1, "loss": 2.0})
    assert sink.enabled is False
    sink.log({"kind": "train", "step": 2, "loss": 2.0})
