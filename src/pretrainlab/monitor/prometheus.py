"""A Prometheus ``/metrics`` endpoint for a training run, served by rank 0 (``prometheus.enabled``).

Why rank 0 and not one port per rank: rank 0 already receives every rank's
hardware metrics and step times (monitor/cluster.py gathers them at log steps
for metrics.jsonl and the straggler rule), and it alone sees the run-level
numbers (loss, tokens/s, MFU, guard events). One endpoint per job means one
scrape target whatever the world size, no per-rank port bookkeeping when several
ranks share a node, and one consistent snapshot per log step. The cost: values
move at log-step cadence, and a dead rank 0 takes the endpoint with it (which
Prometheus's ``up`` then shows).

``PrometheusExporter`` is a metrics sink: each logged record updates gauges in
its own registry. Labels: ``run`` on everything; ``rank`` and ``host`` on the
per-rank ``pretrainlab_hw_*`` series; ``layer``/``expert`` on MoE series;
``source``, ``language``, ``type``, ``stage``/``reason`` on the data-governance
series of the run's dataset version. Guard counters come from the run's
events.jsonl and alerts.jsonl (read incrementally at each record).
``EXPORTED_METRICS`` lists every metric name (the Grafana dashboard test checks
its queries against it).
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable
from pathlib import Path

from pretrainlab.config import PrometheusConfig
from pretrainlab.errors import UserError
from pretrainlab.monitor.hardware import RANK_FIELDS
from pretrainlab.monitor.sinks import MetricsSink

GLOBAL = {  # record key -> (metric name, help)
    "step": ("pretrainlab_step", "Optimizer steps done."),
    "tokens": ("pretrainlab_tokens", "Training tokens seen."),
    "loss": ("pretrainlab_loss", "Training loss (mean over ranks and micro-batches)."),
    "val_loss": ("pretrainlab_val_loss", "Held-out loss at the last validation."),
    "grad_norm": ("pretrainlab_grad_norm", "Global gradient norm before clipping."),
    "lr": ("pretrainlab_learning_rate", "Learning rate."),
    "tokens_per_s": ("pretrainlab_tokens_per_second", "Training throughput, all ranks."),
    "mfu": ("pretrainlab_mfu", "Model FLOPs utilisation (fraction of the peak)."),
    "packing/efficiency": ("pretrainlab_packing_efficiency", "Share of real (non-pad) tokens in packed rows."),
    "moe/aux_loss": ("pretrainlab_moe_aux_loss", "MoE load-balancing loss, mean over layers."),
    "moe/z_loss": ("pretrainlab_moe_z_loss", "MoE router z-loss, mean over layers."),
    "moe/drop_rate": ("pretrainlab_moe_drop_rate", "Largest share of dropped expert assignments over layers."),
    "moe/cv_max": ("pretrainlab_moe_cv_max", "Largest expert-load coefficient of variation over layers."),
}
MOE_LAYER = {"cv": "Expert-load coefficient of variation.", "drop_rate": "Share of dropped assignments.",
             "top_share": "Share of tokens routed to the top experts.", "max_load": "Busiest expert's load / mean."}
HW = {f: f"Per-rank {f.replace('_', ' ')} (mean over the log window)." for f in RANK_FIELDS}
_MOE_KEY = re.compile(r"^moe/layer(\d+)/(\w+)$")
_HW_KEY = re.compile(r"^hw/rank(\d+)/(\w+)$")
DATA = {
    "pretrainlab_data_source_tokens": ("Estimated tokens per source in the run's dataset version.", ["source"]),
    "pretrainlab_data_source_token_share": ("Share of the dataset's tokens per source.", ["source"]),
    "pretrainlab_data_language_docs": ("Documents per language in the dataset version.", ["language"]),
    "pretrainlab_data_pii_detections": ("PII detections (redacted or dropped) per type.", ["type"]),
    "pretrainlab_data_quarantined_docs": ("Documents removed/quarantined per stage and reason.", ["stage", "reason"]),
}
EXPORTED_METRICS = sorted(
    [name for name, _ in GLOBAL.values()] + [f"pretrainlab_moe_layer_{k}" for k in MOE_LAYER]
    + ["pretrainlab_moe_expert_load_share", "pretrainlab_mix_share", "pretrainlab_events_total",
       "pretrainlab_alerts_total", "pretrainlab_run_info"] + [f"pretrainlab_hw_{f}" for f in HW] + list(DATA))


class PrometheusExporter(MetricsSink):
    """Serves ``/metrics`` on ``cfg.host:cfg.port`` from construction until ``close()``."""

    def __init__(self, cfg: PrometheusConfig, run: str, run_dir: Path, hosts: list[str] | None = None,
                 governance: Callable[[], dict | None] | None = None):
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        self.run, self.run_dir, self.hosts = run, Path(run_dir), list(hosts or [])
        self.registry = CollectorRegistry(auto_describe=True)
        g = lambda name, doc, labels=(): Gauge(name, doc, ["run", *labels], registry=self.registry)  # noqa: E731
        self.g = {key: g(name, doc) for key, (name, doc) in GLOBAL.items()}
        self.moe = {k: g(f"pretrainlab_moe_layer_{k}", doc, ["layer"]) for k, doc in MOE_LAYER.items()}
        self.expert = g("pretrainlab_moe_expert_load_share", "Share of a layer's routed tokens per expert.",
                        ["layer", "expert"])
        self.mix = g("pretrainlab_mix_share", "Realized token share per source in the current mixture stage.", ["source"])
        self.hw = {f: g(f"pretrainlab_hw_{f}", doc, ["rank", "host"]) for f, doc in HW.items()}
        self.events = g("pretrainlab_events_total", "Guard and run events so far (events.jsonl), per event.", ["event"])
        self.alerts = g("pretrainlab_alerts_total", "Alerts sent so far (alerts.jsonl), per rule and level.",
                        ["rule", "level"])
        self.info = g("pretrainlab_run_info", "1, labelled with the run's dataset version.",
                      ["dataset_version", "manifest_id"])
        self.data = {name: g(name, doc, labels) for name, (doc, labels) in DATA.items()}
        self._offsets: dict[str, int] = {}
        self._counts: dict[str, dict[tuple, int]] = {"events.jsonl": {}, "alerts.jsonl": {}}
        try:
            self.server, self._thread = start_http_server(cfg.port, cfg.host, registry=self.registry)
        except OSError as exc:
            raise UserError(f"prometheus: cannot listen on {cfg.host}:{cfg.port} ({exc.strerror or exc}); "
                            "pick another --set prometheus.port=PORT (or 0 for any free port)") from None
        self.address = f"{cfg.host}:{self.server.server_port}"
        if governance is not None:  # reading a corpus can take a while: never on the training thread
            threading.Thread(target=self._set_governance, args=(governance,), daemon=True).start()

    # ----------------------------------------------------------------- records

    def log(self, record: dict) -> None:
        if record.get("kind") == "ranks":
            self.hosts = [str(h) for h in record.get("hosts") or []]
            return
        for key, value in record.items():
            if isinstance(value, bool):
                continue
            if key in self.g and isinstance(value, (int, float)) and math.isfinite(value):
                self.g[key].labels(self.run).set(value)
            elif key.startswith("hw/"):
                self._hw(key, value)
            elif key.startswith("moe/layer"):
                self._moe(key, value)
            elif key.startswith("mix/share/") and isinstance(value, (int, float)):
                self.mix.labels(self.run, key[len("mix/share/"):]).set(value)
        self._tail_counts()

    def _hw(self, key: str, value) -> None:
        m = _HW_KEY.match(key)
        if m and m.group(2) in self.hw and isinstance(value, (int, float)) and math.isfinite(value):
            rank = int(m.group(1))
            host = self.hosts[rank] if rank < len(self.hosts) else ""
            self.hw[m.group(2)].labels(self.run, str(rank), host).set(value)

    def _moe(self, key: str, value) -> None:
        m = _MOE_KEY.match(key)
        if not m:
            return
        layer, name = m.groups()
        if name in self.moe and isinstance(value, (int, float)) and math.isfinite(value):
            self.moe[name].labels(self.run, layer).set(value)
        elif name == "tokens_per_expert" and isinstance(value, list) and sum(value) > 0:
            total = sum(value)
            for e, n in enumerate(value):
                self.expert.labels(self.run, layer, str(e)).set(n / total)

    def _tail_counts(self) -> None:
        """Count the events and alerts appended since the last call (only whole lines)."""
        for name, gauge, labels in (("events.jsonl", self.events, ("event",)),
                                    ("alerts.jsonl", self.alerts, ("rule", "level"))):
            path = self.run_dir / name
            try:
                with open(path, "rb") as fh:
                    fh.seek(self._offsets.get(name, 0))
                    chunk = fh.read()
            except OSError:
                continue
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self._offsets[name] = self._offsets.get(name, 0) + len(complete)
            counts = self._counts[name]
            for line in complete.splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                key = tuple(str(rec.get(k)) for k in labels)
                counts[key] = counts.get(key, 0) + 1
                gauge.labels(self.run, *key).set(counts[key])

    def _set_governance(self, governance: Callable[[], dict | None]) -> None:
        facts = governance()
        if not facts:
            return
        self.info.labels(self.run, str(facts.get("dataset_version")), str(facts.get("manifest_id"))).set(1)
        for source, s in facts["sources"].items():
            self.data["pretrainlab_data_source_tokens"].labels(self.run, source).set(s["tokens"])
            self.data["pretrainlab_data_source_token_share"].labels(self.run, source).set(s["token_share"])
        for lang, n in facts["languages"].items():
            self.data["pretrainlab_data_language_docs"].labels(self.run, lang).set(n)
        for kind, n in facts["pii"].items():
            self.data["pretrainlab_data_pii_detections"].labels(self.run, kind).set(n)
        for (stage, reason), n in facts["quarantine"].items():
            self.data["pretrainlab_data_quarantined_docs"].labels(self.run, stage, reason).set(n)

    def close(self) -> None:
        if getattr(self, "server", None) is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
