"""The data-governance facts of a run's dataset version, for the dashboard and the Prometheus exporter.

A run's token shards record the clean corpus they came from
(``tokenizer.shards.corpus_dir_of``); that corpus holds the governance report
(``governance.json``, written by `pretrainlab data report`) or, when it was
never written or is stale (another ``manifest_id``), the data to compute it
(``data.report.collect``, which reads the whole corpus once). ``summary`` keeps
what the views show: per-source shares, languages, PII detections and
quarantine reasons.
"""

from __future__ import annotations

import json
from pathlib import Path

from pretrainlab.data.report import collect
from pretrainlab.errors import UserError
from pretrainlab.tokenizer.shards import corpus_dir_of, read_tokens_manifest


def corpus_of_tokens(tokens_dir: str | Path) -> Path | None:
    """The clean corpus a shard folder was made from (None if the shards or the corpus are gone)."""
    try:
        return corpus_dir_of(Path(tokens_dir), read_tokens_manifest(tokens_dir))
    except (UserError, OSError, ValueError):
        return None


def corpus_of_run(config: dict) -> Path | None:
    """The clean corpus of a run, from its resolved config.yaml (via the token shards it names)."""
    tokens = ((config or {}).get("train") or {}).get("tokens")
    return corpus_of_tokens(tokens) if tokens else None


def governance_report(clean: Path) -> dict | None:
    """``governance.json`` of the corpus when it matches the corpus manifest, else computed; None if unreadable."""
    try:
        manifest = json.loads((clean / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    try:
        saved = json.loads((clean / "governance.json").read_text(encoding="utf-8"))
        if saved.get("manifest_id") == manifest.get("manifest_id"):
            return saved
    except (OSError, ValueError, AttributeError):
        pass
    try:
        return collect(clean)
    except (UserError, OSError, ValueError, KeyError):
        return None


def summary(report: dict) -> dict:
    """Shares, languages, PII and quarantine counts of a governance report, in plain dicts of numbers."""
    sources = report.get("sources") or {}
    pii = report.get("pii") or {}
    return {
        "dataset_version": report.get("dataset_version"),
        "manifest_id": report.get("manifest_id"),
        "sources": {name: {"docs": s.get("docs_out", 0), "tokens": s.get("tokens_est", 0),
                           "token_share": s.get("token_share", 0.0), "doc_share": s.get("doc_share", 0.0),
                           "license": s.get("license")} for name, s in sources.items()},
        "languages": dict(report.get("languages") or {}),
        "pii": dict(pii.get("detections") or {}),
        "docs_with_pii": pii.get("docs_with_pii", 0),
        "quarantine": {(stage, reason): n for stage, reasons in (report.get("removals_by_stage") or {}).items()
                       for reason, n in reasons.items()},
    }
