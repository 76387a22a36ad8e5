"""Cluster observability: hardware metrics per rank, the hardware and governance views, Prometheus, Grafana, stragglers.

The straggler test slows one of two gloo ranks under torchrun on purpose; the
Prometheus test starts Debian's real ``prometheus`` (installed by ``.ci/run``)
against a tiny training job and reads the series back through its HTTP API.
"""

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import tiny_overrides
from pretrainlab.config import PrometheusConfig, load_config
from pretrainlab.data.pipeline import build_clean_corpus
from pretrainlab.data.report import write_data_report
from pretrainlab.errors import UserError
from pretrainlab.fsio import append_jsonl, iter_jsonl
from pretrainlab.monitor.dashboard import render_views
from pretrainlab.monitor.hardware import FIELDS, HardwareSampler, NvmlReader
from pretrainlab.monitor.prometheus import EXPORTED_METRICS, PrometheusExporter
from pretrainlab.monitor.report import build_report_html
from pretrainlab.monitor.straggler import StragglerRule
from pretrainlab.recipes import train
from pretrainlab.train.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode("utf-8")


# --------------------------------------------------------------------------- units


def test_sampler_reads_host_metrics_and_returns_window_means():
    sampler = HardwareSampler(interval_s=60, cuda_index=None)
    sampler.sample()
    sampler.sample()
    snap = sampler.snapshot()
    assert list(snap) == list(FIELDS)
    assert snap["rss_gb"] > 0 and 0 <= snap["host_mem_used_pct"] <= 100
    assert snap["disk_read_mb_s"] >= 0 and math.isfinite(snap["net_recv_mb_s"])
    assert math.isnan(snap["gpu_temp_c"])  # no CUDA device given: GPU fields are NaN, not made up
    assert sampler.samples == 2 and sampler.sample_seconds > 0


class FakeNvml:
    """nvidia-ml-py's functions as NVML answers them on a board without power readings."""

    NVML_TEMPERATURE_GPU, NVML_CLOCK_SM, NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC = 0, 1, 1, 0

    def __init__(self):
        self.temp = 60

    def nvmlDeviceGetUtilizationRates(self, h):
        return type("U", (), {"gpu": 97, "memory": 40})()

    def nvmlDeviceGetMemoryInfo(self, h):
        return type("M", (), {"used": 40 * 1024**3, "total": 80 * 1024**3})()

    def nvmlDeviceGetTemperature(self, h, sensor):
        self.temp += 10
        return self.temp

    def nvmlDeviceGetPowerUsage(self, h):
        raise RuntimeError("NVMLError_NotSupported")

    def nvmlDeviceGetClockInfo(self, h, clock):
        return 1980

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h):
        return 0x20 + self.temp  # changes with every read: the snapshot must keep the last, not a mean

    def nvmlDeviceGetTotalEccErrors(self, h, kind, counter):
        return 2


def test_gpu_readings_are_averaged_except_bitmasks_and_counters_and_unsupported_ones_are_nan():
    sampler = HardwareSampler(interval_s=60)
    sampler.readers.append(NvmlReader(FakeNvml(), handle=object()))
    sampler.sample()
    sampler.sample()
    snap = sampler.snapshot()
    assert snap["gpu_util_pct"] == 97 and snap["gpu_mem_used_gb"] == 40 and snap["gpu_mem_total_gb"] == 80
    assert snap["gpu_temp_c"] == 75  # mean of 70 and 80
    assert snap["gpu_throttle_reasons"] == 0x20 + 80 and snap["gpu_ecc_errors"] == 2 and snap["gpu_sm_clock_mhz"] == 1980
    assert math.isnan(snap["gpu_power_w"])


def test_sampler_thread_samples_at_its_interval_and_stops():
    sampler = HardwareSampler(interval_s=0.02).start()
    time.sleep(0.3)
    sampler.stop()
    assert sampler.samples >= 5
    assert sampler._thread is None


def test_straggler_rule_names_the_slow_rank_after_k_log_steps_and_rearms():
    rule = StragglerRule(factor=1.5, patience=3)
    assert rule.update([1.0, 1.1, 2.0, 1.0]) == []
    assert rule.update([1.0, 1.1, 2.0, 1.0]) == []
    found = rule.update([1.0, 1.1, 2.0, 1.0])
    assert [(s.rank, s.steps) for s in found] == [(2, 3)] and found[0].ratio == pytest.approx(2.0)
    assert rule.update([1.0, 1.1, 2.0, 1.0]) == []  # reported once while it lasts
    rule.update([1.0, 1.0, 1.0, 1.0])  # back to normal: re-armed
    assert [s.rank for s in [*rule.update([3, 1, 1, 1]), *rule.update([3, 1, 1, 1]), *rule.update([3, 1, 1, 1])]] == [0]


def test_straggler_rule_with_two_ranks_compares_with_the_other_and_ignores_jitter():
    rule = StragglerRule(factor=1.5, patience=2)
    assert rule.update([0.010, 0.012]) == [] and rule.update([0.010, 0.012]) == []
    rule.update([0.010, 0.060])
    assert [s.rank for s in rule.update([0.010, 0.060])] == [1]
    assert StragglerRule(1.5, 1).update([0.01, math.nan]) == []  # one rank's value alone is no comparison


# --------------------------------------------------------------------------- a run with hardware metrics


@pytest.fixture(scope="module")
def hw_run(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("hw") / "run"
    train(load_config(None, tiny_overrides(tiny_data) + [f"run.dir={run}", "train.steps=8", "train.log_every=2",
                                                        "hardware.interval_s=0.05", "train.val_every=100",
                                                        "log.tensorboard=true"]))
    return run


def test_a_run_logs_every_ranks_hardware_and_step_times_as_hw_keys(hw_run):
    records = list(iter_jsonl(hw_run / "metrics.jsonl"))
    ranks = [r for r in records if r["kind"] == "ranks"]
    assert ranks and ranks[0]["hosts"] == [socket.gethostname()]
    logged = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in logged] == [2, 4, 6, 8]
    last = logged[-1]
    for key in ("step_s", "local_s", "data_wait_s", "rss_gb", "cpu_util_pct", "host_mem_used_pct", "disk_read_mb_s"):
        assert math.isfinite(last[f"hw/rank0/{key}"]), key
    assert 0 < last["hw/rank0/data_wait_s"] < last["hw/rank0/local_s"] <= last["hw/rank0/step_s"]
    assert not any(k.startswith("hw/rank0/gpu_") for k in last)  # CPU run: no invented GPU values


def test_hardware_metrics_reach_the_trackers(hw_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(hw_run / "tb"))
    acc.Reload()
    assert {"train/hw/rank0/rss_gb", "train/hw/rank0/local_s", "train/hw/rank0/data_wait_s"} <= set(acc.Tags()["scalars"])


def test_report_and_dashboard_show_rank_by_time_heat_maps(hw_run):
    html = build_report_html(hw_run)
    assert "<h2>Hardware</h2>" in html
    for title in ("Memory used", "Utilisation", "Step time before synchronising", "Data wait per step"):
        assert title in html
    assert f"rank 0 · {socket.gethostname()[:14]}" in html
    view = render_views(hw_run.parent)
    assert view["hardware"].count('class="chart hw-heatmap"') == 4
    assert '<a href="#gov-run">governance</a>' in view["status"]


def test_dashboard_names_a_straggler_from_the_events(hw_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(hw_run, run)
    append_jsonl(run / "events.jsonl", {"time": time.time(), "step": 6, "event": "straggler", "rank": 1,
                                        "host": "node-7", "seconds": 0.5, "median": 0.1, "ratio": 5.0})
    view = render_views(tmp_path)
    assert "Stragglers: rank 1 on node-7" in view["hardware"]
    assert "<td>1</td><td>governance" not in view["status"] and re.search(r"<td>1</td><td><a href", view["status"])


# --------------------------------------------------------------------------- governance view


LONG = "This sentence is long enough to pass the length filter of this test, and it is plain English text. "


@pytest.fixture(scope="module")
def built_corpus(tmp_path_factory) -> Path:
    """A real clean corpus (`data build`: langid, PII redaction, dedup; one doc too short, one duplicate)
    with its `data report` (governance.json)."""
    root = tmp_path_factory.mktemp("gov")
    raw = root / "raw"
    raw.mkdir()
    docs = {"prose": [f"Story {i}. {LONG * 3}" for i in range(8)] + ["short"],
            "mail": [f"Letter {i}: write to person{i}@example.com. {LONG * 2}" for i in range(4)]
            + [f"Letter 0: write to person0@example.com. {LONG * 2}"]}
    registry = {}
    for name, texts in docs.items():
        (raw / f"{name}.jsonl").write_text("".join(json.dumps({"id": f"{name}:{i}", "text": t}) + "\n"
                                                   for i, t in enumerate(texts)))
        registry[name] = {"path": f"{name}.jsonl", "format": "jsonl", "text_field": "text", "languages": ["en"],
                          "license": "CC0-1.0" if name == "prose" else "CC-BY-4.0", "modality": "text",
                          "approval": {"status": "approved", "by": "tests", "date": "2026-01-01"}, "pii_policy": "redact"}
    (raw / "sources.yaml").write_text(yaml.safe_dump({"sources": registry}))
    build_clean_corpus(load_config(None, [f"workdir={root}", "data.min_chars=50", "data.heldout_fraction=0",
                                          "data.stages=[normalize, length_filter, langid, pii, exact_dedup]"]))
    write_data_report(root / "clean")
    return root / "clean"


def _governance_run(tmp_path: Path, corpus: Path, report: bool = True) -> Path:
    """A copy of the corpus, a token-shard manifest naming it, and a run whose config trains on those shards."""
    clean, tokens, run = tmp_path / "clean", tmp_path / "tokens", tmp_path / "runs" / "gov"
    shutil.copytree(corpus, clean)
    if not report:
        (clean / "governance.json").unlink()
    for d in (tokens, run):
        d.mkdir(parents=True)
    (tokens / "manifest.json").write_text(json.dumps({"corpus_dir": str(clean)}))
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"tokens": str(tokens), "steps": 10}}))
    return run


@pytest.mark.parametrize("report", [True, False], ids=["governance.json", "computed"])
def test_governance_view_shows_the_runs_dataset_shares_languages_pii_and_quarantine(tmp_path, built_corpus, report):
    run = _governance_run(tmp_path, built_corpus, report)
    view = render_views(run.parent)
    gov = view["governance"]
    assert 'id="gov-gov"' in gov and "dataset version <b>dataset-v" in gov
    # five letters carry an address (the duplicate is redacted before dedup drops it)
    for text in ("<td>prose</td><td>CC0-1.0</td><td>8</td>", "<td>mail</td><td>CC-BY-4.0</td><td>4</td>",
                 "<td>en</td><td>12</td><td>100.0%</td>", "<td>email</td><td>5</td>", "5 document(s) with PII",
                 "<td>length_filter</td><td>too_short</td><td>1</td>", "<td>exact_dedup</td><td>duplicate</td><td>1</td>"):
        assert text in gov, text
    assert '<a href="#gov-gov">governance</a>' in view["status"]
    assert "<h2>Data governance</h2>" in build_report_html(run)


def test_governance_view_says_why_when_the_corpus_is_gone(tmp_path, built_corpus):
    run = _governance_run(tmp_path, built_corpus)
    shutil.rmtree(tmp_path / "clean")
    assert "No data-governance facts for gov" in render_views(run.parent)["governance"]


# --------------------------------------------------------------------------- Prometheus exporter and Grafana


def test_exporter_serves_run_moe_guard_and_per_rank_hardware_metrics(tmp_path):
    append_jsonl(tmp_path / "events.jsonl", {"time": 1, "step": 3, "event": "skip_step"})
    facts = {"dataset_version": "v3", "manifest_id": "m", "sources": {"prose": {"tokens": 10, "token_share": 1.0}},
             "languages": {"en": 3}, "pii": {"email": 2}, "docs_with_pii": 1, "quarantine": {("dedup", "duplicate"): 4}}
    exp = PrometheusExporter(PrometheusConfig(enabled=True, port=0), "r1", tmp_path, governance=lambda: facts)
    try:
        exp.log({"kind": "ranks", "step": 0, "hosts": ["node-a", "node-b"]})
        exp.log({"kind": "train", "step": 4, "loss": 2.5, "tokens_per_s": 1000.0, "mfu": 0.4, "grad_norm": 0.7,
                 "mix/share/prose": 1.0, "moe/layer0/cv": 0.3, "moe/layer0/tokens_per_expert": [1, 3],
                 "hw/rank1/gpu_temp_c": 71.0, "hw/rank0/local_s": 0.2, "guard": "spike"})
        append_jsonl(tmp_path / "events.jsonl", {"time": 2, "step": 5, "event": "skip_step"})
        exp.log({"kind": "val", "step": 4, "val_loss": 2.4})
        deadline = time.time() + 10
        while True:  # the governance facts are set on a background thread
            text = _get(f"http://{exp.address}/metrics")
            if "pretrainlab_data_pii_detections" in text and 'type="email"' in text or time.time() > deadline:
                break
            time.sleep(0.05)
    finally:
        exp.close()
    for line in ('pretrainlab_loss{run="r1"} 2.5', 'pretrainlab_val_loss{run="r1"} 2.4',
                 'pretrainlab_mfu{run="r1"} 0.4', 'pretrainlab_moe_layer_cv{layer="0",run="r1"} 0.3',
                 'pretrainlab_moe_expert_load_share{expert="1",layer="0",run="r1"} 0.75',
                 'pretrainlab_hw_gpu_temp_c{host="node-b",rank="1",run="r1"} 71.0',
                 'pretrainlab_hw_local_s{host="node-a",rank="0",run="r1"} 0.2',
                 'pretrainlab_events_total{event="skip_step",run="r1"} 2.0',
                 'pretrainlab_data_pii_detections{run="r1",type="email"} 2.0',
                 'pretrainlab_data_quarantined_docs{reason="duplicate",run="r1",stage="dedup"} 4.0'):
        assert line in text, line
    names = set(re.findall(r"^# TYPE (\w+) ", text, flags=re.M))
    assert names == set(EXPORTED_METRICS)  # the list the Grafana test checks against is what is served
    with pytest.raises(OSError):
        _get(f"http://{exp.address}/metrics", timeout=1)  # closed with the run


def test_exporter_on_a_busy_port_is_one_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(UserError, match=r"cannot listen on 127.0.0.1:\d+.*prometheus.port"):
            PrometheusExporter(PrometheusConfig(enabled=True, port=s.getsockname()[1]), "r", tmp_path)


def _grafana_exprs() -> list[str]:
    dash = json.loads((REPO / "monitoring/grafana/pretrainlab.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_grafana_dashboard_has_the_four_views_and_queries_only_exported_metrics():
    dash = json.loads((REPO / "monitoring/grafana/pretrainlab.json").read_text())
    assert [p["title"] for p in dash["panels"] if p["type"] == "row"] == ["Global", "Hardware", "MoE", "Data governance"]
    exprs = _grafana_exprs()
    assert len(exprs) > 30
    exported = set(EXPORTED_METRICS) | {"up"}
    for expr in exprs:
        names = set(re.findall(r"\b(pretrainlab_\w+|up)\b(?=\{|\s|$|\))", expr))
        assert names and names <= exported, expr
    heat = [p for p in dash["panels"] if p["type"] == "status-history"]
    assert {re.search(r"pretrainlab_hw_(\w+)\{", p["targets"][0]["expr"]).group(1) for p in heat if "hw_" in
            p["targets"][0]["expr"]} >= {"gpu_temp_c", "gpu_power_w", "gpu_mem_used_gb", "gpu_util_pct", "local_s"}


def test_shipped_scrape_config_targets_the_default_exporter_port():
    cfg = yaml.safe_load((REPO / "monitoring/prometheus.yml").read_text())
    job = cfg["scrape_configs"][0]
    assert job["job_name"] == "pretrainlab" and job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"127.0.0.1:{PrometheusConfig().port}"]


# --------------------------------------------------------------------------- a real Prometheus


class QueryPrometheus(Callback):
    """At one step, holds training (the exporter keeps serving) until Prometheus has the series, then lets it go."""

    def __init__(self, api: str, step: int, queries: list[str], timeout_s: float = 60):
        self.api, self.step, self.queries, self.timeout_s = api, step, queries, timeout_s
        self.results: dict[str, list] = {}

    def on_step_end(self, ctx, metrics):
        if ctx.step != self.step:
            return
        deadline = time.time() + self.timeout_s
        while time.time() < deadline and len(self.results) < len(self.queries):
            for q in self.queries:
                try:
                    body = json.loads(_get(f"{self.api}/api/v1/query?query={urllib.parse.quote(q)}", timeout=2))
                except OSError:
                    continue
                if body.get("status") == "success" and body["data"]["result"]:
                    self.results[q] = body["data"]["result"]
            time.sleep(0.3)


@pytest.mark.slow
def test_a_real_prometheus_scrapes_loss_and_hardware_series_from_a_training_job(tiny_data, tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        reason = "the prometheus binary is not installed (.ci/run installs Debian's `prometheus` package)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    exporter_port, prom_port = _free_port(), _free_port()
    scrape = yaml.safe_load((REPO / "monitoring/prometheus.yml").read_text())  # the shipped config, port adapted
    job = scrape["scrape_configs"][0]
    job.update(scrape_interval="1s", scrape_timeout="1s")
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{exporter_port}"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(scrape))
    log = open(tmp_path / "prometheus.log", "w")
    prom = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    queries = ['pretrainlab_loss{run="run"}', 'pretrainlab_hw_rss_gb{run="run",rank="0"}']
    probe = QueryPrometheus(f"http://127.0.0.1:{prom_port}", step=6, queries=queries)
    try:
        train(load_config(None, tiny_overrides(tiny_data) + [
            f"run.dir={tmp_path / 'run'}", "train.steps=8", "train.val_every=100", "hardware.interval_s=0.2",
            "prometheus.enabled=true", f"prometheus.port={exporter_port}"]), callbacks=[probe])
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        log.close()
    assert set(probe.results) == set(queries), (tmp_path / "prometheus.log").read_text()[-3000:]
    hw = probe.results[queries[1]][0]
    assert hw["metric"]["host"] == socket.gethostname() and float(hw["value"][1]) > 0
    assert float(probe.results[queries[0]][0]["value"][1]) > 0


# --------------------------------------------------------------------------- a straggler under torchrun

SLOW_RANK_SCRIPT = """
import sys, time
import torch.distributed as dist
from pretrainlab.config import load_config
from pretrainlab.recipes import train
from pretrainlab.train.callbacks import Callback

class SlowRank(Callback):  # rank 1 works 60 ms longer on every step before it synchronises
    def extra_losses(self, ctx, batch, logits):
        if ctx.rank == 1:
            time.sleep(0.06)
        return {}

train(load_config(None, sys.argv[1:]), resume="never", callbacks=[SlowRank()])
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_a_rank_slowed_on_purpose_is_called_out_by_rank_and_host(tiny_data, tmp_path):
    script = tmp_path / "slow_rank.py"
    script.write_text(SLOW_RANK_SCRIPT)
    run = tmp_path / "run"
    sets = tiny_overrides(tiny_data) + [f"run.dir={run}", "train.steps=8", "train.val_every=100", "train.log_every=1",
                                        "checkpoint.every=100", "hardware.interval_s=0.2", "guard.straggler_steps=3"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(script), *sets]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    alerts = [a for a in iter_jsonl(run / "alerts.jsonl") if a["rule"] == "straggler"]
    assert alerts and {a["rank"] for a in alerts} == {1}, alerts  # (a busy machine may interrupt the streak once)
    assert alerts[0]["host"] == socket.gethostname() and alerts[0]["step"] >= 4  # step 1 is not timed; 3 log steps
    assert f"rank 1 on host {socket.gethostname()}" in alerts[0]["message"]
    assert {e["rank"] for e in iter_jsonl(run / "events.jsonl") if e["event"] == "straggler"} == {1}
    train_recs = [r for r in iter_jsonl(run / "metrics.jsonl") if r["kind"] == "train" and "hw/rank0/local_s" in r]
    local_gap = sorted(r["hw/rank1/local_s"] - r["hw/rank0/local_s"] for r in train_recs)
    wall_gap = sorted(abs(r["hw/rank1/step_s"] - r["hw/rank0/step_s"]) for r in train_recs)
    median = len(train_recs) // 2
    assert local_gap[median] > 0.04, local_gap  # the 60 ms show where each rank works on its own...
    assert wall_gap[median] < local_gap[median] / 2, (wall_gap, local_gap)  # ...not in wall time: the ranks wait
