"""Metrics sinks: where each logged record goes (JSONL always, TensorBoard optional).

A record is a flat dict such as ``{"kind": "train", "step": 10, "loss": 3.2, ...}``
or ``{"kind": "val", "step": 100, "val_loss": 3.1, "val_loss/man_pages": 2.9}``.
``metrics.jsonl`` is the source of truth; other sinks are views of it.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

from pretrainlab.fsio import append_jsonl
from pretrainlab.progress import console

_NOT_SCALARS = {"kind", "step", "time"}


class MetricsSink:
    """Interface: ``log(record)`` for each metrics record, ``close()`` once at the end."""

    def log(self, record: dict) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class JsonlSink(MetricsSink):
    """Append one JSON line per record and flush it (``fsio.append_jsonl``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: dict) -> None:
        append_jsonl(self.path, record)


def scalar_tag(kind: str, key: str) -> str:
    """TensorBoard tag for a record key: ('train','loss') -> 'train/loss',
    ('val','val_loss') -> 'val/loss', ('val','val_loss/src') -> 'val/loss/src'."""
    if key.startswith(f"{kind}_"):
        key = key[len(kind) + 1 :]
    elif key.startswith(f"{kind}/"):
        key = key[len(kind) + 1 :]
    return f"{kind}/{key}"


def numeric_items(record: dict):
    """(key, float) for every numeric, non-bool, non-bookkeeping field of a record."""
    for key, value in record.items():
        if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        yield key, float(value)


class TensorBoardSink(MetricsSink):
    """One scalar per numeric key, tagged ``<kind>/<key>``, at ``record["step"]``.

    If TensorBoard is not installed it prints one warning and does nothing.
    """

    def __init__(self, logdir: str | Path, flush_secs: int = 10):
        self.logdir = Path(logdir)
        self._writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional (pretrainlab[tensorboard])
        except Exception as exc:  # ImportError, or a broken tensorboard install
            console.print(f"[yellow]warning:[/] TensorBoard logging disabled ({exc}); `pip install tensorboard` to enable it")
            return
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.logdir), flush_secs=flush_secs)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def log(self, record: dict) -> None:
        if self._writer is None:
            return
        kind = str(record.get("kind", "metrics"))
        step = int(record.get("step", 0))
        for key, value in numeric_items(record):
            if math.isnan(value):
                continue
            self._writer.add_scalar(scalar_tag(kind, key), value, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class MultiSink(MetricsSink):
    """Fan a record out to several sinks; close closes them all."""

    def __init__(self, sinks: list[MetricsSink] | None = None):
        self.sinks = list(sinks or [])

    def add(self, sink: MetricsSink) -> None:
        self.sinks.append(sink)

    def log(self, record: dict) -> None:
        for sink in self.sinks:
            sink.log(record)

    def close(self) -> None:
        errors = []
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # close the others even if one fails
                errors.append(exc)
        if errors:
            raise errors[0]


class _TrackerSink(MetricsSink):
    """Base for optional external trackers: a tracker failure warns once and disables the sink.

    A run never fails because a tracker failed; metrics.jsonl stays the source of truth.
    """

    name = "tracker"

    def __init__(self) -> None:
        self.enabled = False

    def _disable(self, exc: BaseException) -> None:
        if self.enabled or not getattr(self, "_warned", False):
            console.print(f"[yellow]warning:[/] {self.name} logging disabled ({type(exc).__name__}: {exc})")
        self._warned = True
        self.enabled = False

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        metrics = {scalar_tag(str(record.get("kind", "metrics")), k): v
                   for k, v in numeric_items(record) if math.isfinite(v)}
        if not metrics:
            return
        try:
            self._log(metrics, int(record.get("step", 0)))
        except Exception as exc:
            self._disable(exc)

    def close(self) -> None:
        if not self.enabled:
            return
        try:
            self._close()
        except Exception as exc:
            self._disable(exc)
        self.enabled = False


class WandbSink(_TrackerSink):
    """Weights & Biases in offline mode (files under ``<run>/wandb``; `wandb sync` uploads later)."""

    name = "W&B"

    def __init__(self, run_dir: str | Path, project: str, run_name: str, config: dict | None = None):
        super().__init__()
        try:
            import wandb  # optional (pretrainlab[trackers])

            self._run = wandb.init(mode="offline", dir=str(run_dir), project=project, name=run_name,
                                   config=config or {}, reinit="finish_previous")
            self.enabled = True
        except Exception as exc:  # not installed, or init failed
            self._disable(exc)

    def _log(self, metrics: dict, step: int) -> None:
        self._run.log(metrics, step=step)

    def _close(self) -> None:
        self._run.finish()


class MlflowSink(_TrackerSink):
    """MLflow tracking to a local file store (default ``<run>/mlruns``), same metric names as TensorBoard."""

    name = "MLflow"

    def __init__(self, run_dir: str | Path, run_name: str, tracking_uri: str | None = None,
                 params: dict | None = None):
        super().__init__()
        try:
            import mlflow  # optional (pretrainlab[trackers])

            self._mlflow = mlflow
            if tracking_uri is None:
                # A file store needs no database packages (mlflow-skinny); MLflow 3 asks for an explicit opt-in.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                tracking_uri = Path(run_dir, "mlruns").resolve().as_uri()
            mlflow.set_tracking_uri(tracking_uri)
            self._run = mlflow.start_run(run_name=run_name)
            if params:
                mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            self.enabled = True
        except Exception as exc:
            self._disable(exc)

    def _log(self, metrics: dict, step: int) -> None:
        # The file store keeps each metric as a file named by its key, so "val/loss" and
        # "val/loss/code" would collide (file vs folder): MLflow names use "." where TensorBoard uses "/".
        self._mlflow.log_metrics({k.replace("/", "."): v for k, v in metrics.items()}, step=step)

    def _close(self) -> None:
        self._mlflow.end_run()
