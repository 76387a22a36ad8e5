"""The `log`, `alerts`, `hardware` and `prometheus` config sections, owned by this package.

``pretrainlab.config.ProjectConfig`` gathers every package's section; this module imports
nothing from pretrainlab but the ``Section`` base (and other packages' section modules), so
``pretrainlab.config`` can import it without a circle.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pretrainlab.configsection import Section


class LogConfig(Section):
    tensorboard: bool = Field(True, description="Write TensorBoard event files to <run>/tb.")
    wandb: bool = Field(False, description="Also log to Weights & Biases in offline mode (<run>/wandb), if installed.")
    wandb_project: str = Field("pretrainlab", description="W&B project name.")
    mlflow: bool = Field(False, description="Also log to MLflow, if installed.")
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: a file store in <run>/mlruns).")
    peak_flops: float | None = Field(
        None, gt=0, description="Peak FLOP/s for MFU; default: measured fp32 matmul rate on CPU, datasheet on GPU."
    )


class AlertsConfig(Section):
    """Where guard alerts go (monitor/alerts.py): console, a JSONL file, an optional webhook."""

    console: bool = Field(True, description="Print alerts on the console.")
    file: Path | None = Field(None, description="Alerts JSONL file (default: <run>/alerts.jsonl).")
    webhook_url: str | None = Field(None, description="POST each alert as JSON to this http(s) URL (e.g. a chat webhook).")
    webhook_timeout_s: float = Field(5.0, gt=0, le=60, description="Seconds before a webhook POST is abandoned.")
    webhook_retries: int = Field(2, ge=0, le=10, description="Extra attempts after a failed webhook POST.")
    min_level: Literal["info", "warning", "critical"] = Field("warning", description="Alerts below this level are not sent.")

    @model_validator(mode="after")
    def _url_scheme(self) -> "AlertsConfig":
        if self.webhook_url and not re.match(r"^https?://[^\s/]+", self.webhook_url):
            raise ValueError(f"webhook_url {self.webhook_url!r} must start with http:// or https://")
        return self


class HardwareConfig(Section):
    """Hardware metrics per rank (monitor/hardware.py), sampled on a background thread.

    Every rank samples psutil (CPU utilisation, RSS, host memory, disk and network
    I/O) and, on CUDA, NVML (GPU utilisation, memory, temperature, power, SM clock,
    throttle reasons, ECC errors), and times its steps (step time, time before the
    first synchronisation with other ranks, data wait). At log steps the ranks'
    values are gathered to rank 0 and logged as ``hw/rank{r}/...`` keys.
    """

    enabled: bool = Field(True, description="Sample hardware metrics and per-rank step times (logged at log steps).")
    interval_s: float = Field(1.0, gt=0, le=3600, description="Seconds between two samples of the background sampler.")
    gpu: bool = Field(True, description="Read GPU metrics through NVML (nvidia-ml-py) when training on CUDA.")


class PrometheusConfig(Section):
    """A Prometheus `/metrics` endpoint for the run (monitor/prometheus.py); rank 0 serves every rank's metrics."""

    enabled: bool = Field(False, description="Serve /metrics with prometheus_client from rank 0 while training.")
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 lets a cluster's Prometheus scrape it).")
    port: int = Field(9464, ge=0, le=65535, description="Port of /metrics (0: any free port, written to events.jsonl).")
