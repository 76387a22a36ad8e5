"""Alerts reach the console, the alerts file and a webhook (a local HTTP server on 127.0.0.1)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pretrainlab.config import AlertsConfig, load_config
from pretrainlab.errors import ConfigError, TrainingPaused
from pretrainlab.fsio import iter_jsonl
from pretrainlab.monitor.alerts import AlertManager


class Receiver:
    """A webhook endpoint on 127.0.0.1 that records every POSTed JSON body (answers ``status``)."""

    def __init__(self, status=200):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append({"path": self.path, "type": self.headers["Content-Type"], "body": json.loads(body)})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_an_alert_goes_to_the_file_and_the_webhook(tmp_path):
    with Receiver() as hook:
        mgr = AlertManager(AlertsConfig(webhook_url=hook.url, webhook_timeout_s=5), tmp_path, "demo")
        rec = mgr.send("critical", "loss_flat", "loss flat over the last 72h", step=1200, slope=0.0)
    assert rec["webhook"] == "delivered"
    (got,) = hook.received
    assert got["path"] == "/hook" and got["type"] == "application/json"
    assert got["body"]["rule"] == "loss_flat" and got["body"]["step"] == 1200 and got["body"]["run"] == "demo"
    (line,) = iter_jsonl(tmp_path / "alerts.jsonl")
    assert line["level"] == "critical" and line["slope"] == 0.0


def test_alerts_below_the_minimum_level_are_not_sent(tmp_path):
    mgr = AlertManager(AlertsConfig(min_level="warning"), tmp_path)
    assert mgr.send("info", "spike", "skipped a step", step=3) is None
    assert not (tmp_path / "alerts.jsonl").exists()


def test_a_failing_webhook_never_stops_training_and_is_recorded(tmp_path, capsys):
    with Receiver(status=500) as hook:
        mgr = AlertManager(AlertsConfig(webhook_url=hook.url, webhook_retries=1), tmp_path)
        first = mgr.send("warning", "rollback", "rolled back", step=5)
        mgr.send("warning", "rollback", "rolled back again", step=9)
    assert first["webhook"] == "failed: HTTP 500"
    assert len(hook.received) == 4  # two alerts, one retry each
    assert len(list(iter_jsonl(tmp_path / "alerts.jsonl"))) == 2
    out = capsys.readouterr()
    assert (out.out + out.err).count("alert webhook") == 1  # warned once


def test_an_unreachable_webhook_times_out_quickly(tmp_path):
    # Port 9 (discard) on 127.0.0.1 refuses connections on a normal machine.
    mgr = AlertManager(AlertsConfig(webhook_url="http://127.0.0.1:9/x", webhook_timeout_s=1, webhook_retries=0), tmp_path)
    rec = mgr.send("critical", "stop", "stopped", step=1)
    assert rec["webhook"].startswith("failed")


def test_a_webhook_url_must_be_http():
    with pytest.raises(ConfigError, match="webhook_url"):
        load_config(None, ["alerts.webhook_url=ftp://example/x"])


def test_a_paused_run_delivers_its_alert_to_the_webhook(tiny_cfg):
    from test_guard import RisingLoss

    with Receiver() as hook:
        cfg = tiny_cfg("train.steps=30", "guard.rising_window=10steps", f"alerts.webhook_url={hook.url}")
        with pytest.raises(TrainingPaused):
            from pretrainlab.recipes import train

            train(cfg, callbacks=[RisingLoss(start=4, rate=0.2)])
    bodies = [r["body"] for r in hook.received]
    assert [b["rule"] for b in bodies] == ["loss_rising"]
    assert bodies[0]["level"] == "critical" and "paused" in bodies[0]["message"]
