"""The live dashboard: views of runs, the local HTTP server, and the page in a real headless browser."""

from __future__ import annotations

import json
import math
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from pretrainlab.errors import UserError
from pretrainlab.fsio import append_jsonl
from pretrainlab.monitor.dashboard import make_server, render_views, start_in_thread


def add_steps(run: Path, start: int, stop: int, moe: bool = False) -> None:
    for step in range(start, stop):
        rec = {"kind": "train", "step": step, "tokens": step * 512, "loss": 6.0 * math.exp(-step / 50) + 1,
               "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 5000.0, "mfu": 0.1, "time": 1.7e9 + step}
        if moe:
            rec.update({"moe/layer0/tokens_per_expert": [10 + step % 3, 12, 9, 11], "moe/layer0/cv": 0.1,
                        "moe/layer0/drop_rate": 0.0, "moe/aux_loss": 1.0, "moe/z_loss": 0.5, "moe/drop_rate": 0.0,
                        "moe/cv_max": 0.1})
        append_jsonl(run / "metrics.jsonl", rec)
        if step % 10 == 0:
            append_jsonl(run / "metrics.jsonl", {"kind": "val", "step": step, "val_loss": 6.5 - step / 40})


def make_run(root: Path, name: str, steps: int = 40, moe: bool = False) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("train:\n  steps: 100\n")
    append_jsonl(run / "events.jsonl", {"time": 1.7e9, "step": 0, "event": "start"})
    add_steps(run, 1, steps + 1, moe)
    for e in ({"step": 12, "event": "skip_step", "reason": "nonfinite"},
              {"step": 14, "event": "rollback", "reason": "nonfinite: 3 consecutive bad steps"},
              {"step": 20, "event": "checkpoint", "path": "x"}):
        append_jsonl(run / "events.jsonl", {"time": 1.7e9 + e["step"], **e})
    return run


def test_views_show_curves_events_and_moe(tmp_path):
    make_run(tmp_path, "dense")
    make_run(tmp_path, "moe", moe=True)
    v = render_views(tmp_path, ["dense"])
    assert v["selected"] == ["dense"] and v["runs"] == ["dense", "moe"]
    assert v["steps"] == {"dense": 40}
    assert v["global"].count("<svg") == 7 and "<polyline" in v["global"]
    for title in ("Loss", "Validation loss", "Learning rate", "Gradient norm", "Tokens seen", "Throughput", "MFU"):
        assert f'aria-label="{title}"' in v["global"]
    assert "ev-rollback" in v["events"] and "ev-skip_step" in v["events"] and "rollback" in v["events"]
    assert "No MoE metrics" in v["moe"]
    assert ">40 / 100<" in v["status"]
    both = render_views(tmp_path, ["dense", "moe"])
    assert ">dense<" in both["global"] and ">moe<" in both["global"]  # overlay legend names the runs
    assert "<h3>moe</h3>" in both["moe"] and "<svg" in both["moe"]


def test_the_server_serves_the_page_and_the_views_on_localhost(tmp_path):
    make_run(tmp_path, "a")
    server = make_server(tmp_path, "127.0.0.1", 0, refresh_s=1)
    start_in_thread(server)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        page = urllib.request.urlopen(base + "/", timeout=5).read().decode()
        assert "<script>" in page and "http" not in page.split("<script>")[1]  # no external resources
        view = json.loads(urllib.request.urlopen(base + "/api/view?run=a", timeout=5).read())
        assert view["steps"] == {"a": 40}
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(base + "/../../etc/passwd", timeout=5)
    finally:
        server.shutdown()
        server.server_close()


def test_a_missing_runs_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="runs folder not found"):
        make_server(tmp_path / "nope", port=0)


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_path), options=opts)


def _wait(predicate, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the page")


def test_the_page_loads_in_a_headless_browser_and_updates_as_metrics_grow(tmp_path):
    run = make_run(tmp_path, "live")
    server = make_server(tmp_path, "127.0.0.1", 0, refresh_s=0.3)
    start_in_thread(server)
    driver = _browser()
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        steps = lambda: json.loads(driver.find_element("tag name", "body").get_attribute("data-steps") or "{}")  # noqa: E731
        assert _wait(lambda: steps().get("live") == 40)
        charts = driver.find_elements("css selector", "#global svg")
        assert len(charts) == 7
        loss_chart = driver.find_element("css selector", '#global svg[aria-label="Loss"]')
        assert loss_chart.find_elements("css selector", "polyline")
        assert driver.find_elements("css selector", "#timeline .ev-rollback")
        before = driver.find_element("css selector", "#runs-table").text
        assert "40 / 100" in before
        add_steps(run, 41, 61)  # the run trains on
        assert _wait(lambda: steps().get("live") == 60)
        assert "60 / 100" in _wait(lambda: driver.find_element("css selector", "#runs-table").text)
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()


def test_the_static_report_carries_the_events_timeline(tmp_path):
    from pretrainlab.monitor.report import write_report

    run = make_run(tmp_path, "r")
    text = write_report(run).read_text()
    assert 'id="timeline"' in text and "ev-rollback" in text and "<script" not in text
