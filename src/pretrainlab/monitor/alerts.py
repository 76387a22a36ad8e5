"""Alerts: one JSON record per guard finding, sent to the console, a JSONL file and an optional webhook.

A record looks like ``{"time", "run", "step", "level", "rule", "message", ...details}``.
The webhook receives the same record as the body of an HTTP POST
(``Content-Type: application/json``), with a timeout and a few retries. A
delivery failure never stops training: it is noted in the file record and
warned about once on the console.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from pretrainlab.config import AlertsConfig
from pretrainlab.fsio import append_jsonl
from pretrainlab.progress import console

LEVELS = {"info": 0, "warning": 1, "critical": 2}
_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}


def post_json(url: str, body: dict, timeout_s: float, retries: int = 0, backoff_s: float = 0.5) -> str | None:
    """POST ``body`` as JSON; returns None on a 2xx answer, else the last error as text."""
    data = json.dumps(body).encode("utf-8")
    error = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * attempt)
        req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                if 200 <= resp.status < 300:
                    return None
                error = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            error = str(getattr(exc, "reason", None) or exc)
    return error


class AlertManager:
    """Sends alerts per ``AlertsConfig``; ``enabled=False`` (non-main ranks) makes it silent."""

    def __init__(self, cfg: AlertsConfig, run_dir: str | Path, run_name: str | None = None, enabled: bool = True):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_name = run_name or self.run_dir.name
        self.enabled = enabled
        self.path = Path(cfg.file) if cfg.file else self.run_dir / "alerts.jsonl"
        self._warned_webhook = False
        self.sent: list[dict] = []

    def send(self, level: str, rule: str, message: str, step: int | None = None, **details) -> dict | None:
        """Deliver one alert; returns the record written (None if filtered out or disabled)."""
        if level not in LEVELS:
            raise ValueError(f"unknown alert level {level!r}; use one of {list(LEVELS)}")
        if not self.enabled or LEVELS[level] < LEVELS[self.cfg.min_level]:
            return None
        record = {"time": time.time(), "run": self.run_name, "step": step, "level": level, "rule": rule,
                  "message": message, **details}
        if self.cfg.console:
            console.print(f"[{_STYLE[level]}]ALERT {level}[/] [{rule}] step {step}: {message}")
        if self.cfg.webhook_url:
            error = post_json(self.cfg.webhook_url, record, self.cfg.webhook_timeout_s, self.cfg.webhook_retries)
            record = {**record, "webhook": "delivered" if error is None else f"failed: {error}"}
            if error is not None and not self._warned_webhook:
                self._warned_webhook = True
                console.print(f"[yellow]warning:[/] alert webhook {self.cfg.webhook_url} failed ({error}); "
                              "alerts still go to the console and the alerts file")
        append_jsonl(self.path, record)
        self.sent.append(record)
        return record
