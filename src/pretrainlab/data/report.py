"""`pretrainlab data report`: the data-governance report of a clean corpus (JSON + offline HTML).

Reads ``manifest.json``, ``stats.json``, the output shards and ``quarantine.jsonl``
of a corpus written by ``data build`` (streaming, one document at a time) and
writes ``governance.json`` and ``governance.html`` (inline SVG charts, no
scripts, no CDN) next to them. Tokens are estimated without a tokenizer: one
per whitespace-separated word, one per CJK character.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from pathlib import Path

from pretrainlab.data.corpusfiles import SPLITS, split_parts
from pretrainlab.data.textstats import estimate_tokens
from pretrainlab.errors import DataError
from pretrainlab.fsio import atomic_write_json, atomic_write_text

SAMPLES_PER_REASON = 3
_COLORS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]


def _records(path: Path):
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} not found; run `pretrainlab data build` first (or point data.out at a clean corpus)") from None
    except ValueError:
        raise DataError(f"{path} is not valid JSON; rebuild the corpus with `pretrainlab data build`") from None


def _length_bucket(n: int) -> int:
    """Power-of-two bucket index: chars in [2**k, 2**(k+1))."""
    return max(0, int(math.log2(max(1, n))))


def collect(clean: Path, samples_per_reason: int = SAMPLES_PER_REASON) -> dict:
    manifest = _read_json(clean / "manifest.json")
    stats = _read_json(clean / "stats.json")
    sources: dict[str, dict] = {}
    languages: Counter = Counter()
    lang_by_source: dict[str, Counter] = {}
    hist: dict[str, Counter] = {}
    for name, s in stats["sources"].items():
        tokens = docs = chars = 0
        lang_by_source[name] = Counter()
        hist[name] = Counter()
        for split in SPLITS:
            for path in split_parts(clean, name, split):
                for rec in _records(path):
                    text = rec["text"]
                    docs += 1
                    chars += len(text)
                    tokens += estimate_tokens(text)
                    lang = (rec.get("meta") or {}).get("lang", "unknown")
                    languages[lang] += 1
                    lang_by_source[name][lang] += 1
                    hist[name][_length_bucket(len(text))] += 1
        removed = s.get("removed", {})
        dups = removed.get("duplicate", 0) + removed.get("near_duplicate", 0)
        sources[name] = {
            "docs_in": s["docs_in"], "docs_out": docs, "chars_out": chars, "tokens_est": tokens,
            "duplicate_rate": round(dups / s["docs_in"], 4) if s["docs_in"] else 0.0,
            "exact_duplicates": removed.get("duplicate", 0), "near_duplicates": removed.get("near_duplicate", 0),
            "removed": removed, "languages": dict(lang_by_source[name].most_common()),
            "length_histogram": {f"{2**k}-{2**(k + 1) - 1}": v for k, v in sorted(hist[name].items())},
            **{k: v for k, v in manifest.get("sources", {}).get(name, {}).items() if k in ("license", "approval", "group", "pii_policy")},
        }
    total_tokens = sum(s["tokens_est"] for s in sources.values()) or 1
    total_docs = sum(s["docs_out"] for s in sources.values()) or 1
    for s in sources.values():
        s["token_share"] = round(s["tokens_est"] / total_tokens, 4)
        s["doc_share"] = round(s["docs_out"] / total_docs, 4)

    removals = {name: st.get("removed", {}) for name, st in stats["stages"].items() if st.get("removed")}
    pii = stats["stages"].get("pii", {}).get("extra", {})
    trend = []
    for i, b in enumerate(pii.get("batches", [])):
        trend.append({"batch": b.get("batch", i), "docs": b["docs"],
                      "per_1000_docs": {k: round(1000 * v / b["docs"], 2) for k, v in sorted(b["detections"].items())}})
    samples: dict[str, list] = {}
    qpath = clean / "quarantine.jsonl"
    if qpath.is_file():
        with open(qpath, encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                bucket = samples.setdefault(f"{rec['stage']}:{rec['code']}", [])
                if len(bucket) < samples_per_reason:
                    bucket.append({k: rec.get(k) for k in ("id", "source", "reason", "chars", "preview")})
    return {
        "dataset_version": manifest.get("dataset_version"),
        "manifest_id": manifest.get("manifest_id"),
        "created": manifest.get("created"),
        "stages": manifest.get("stages", []),
        "totals": stats.get("totals", {}),
        "refused_sources": manifest.get("refused_sources", {}),
        "refused_files": manifest.get("refused_files", []),
        "sources": sources,
        "languages": dict(languages.most_common()),
        "removals_by_stage": removals,
        "pii": {"detections": pii.get("detections", {}), "by_source": pii.get("by_source", {}),
                "docs_with_pii": pii.get("docs_with_pii", 0), "batch_docs": pii.get("batch_docs"), "trend": trend},
        "quarantine_samples": samples,
    }


# --------------------------------------------------------------------------- HTML


def _pie(counts: dict[str, int], size: int = 180) -> str:
    total = sum(counts.values())
    if not total:
        return "<p>no data</p>"
    r = size / 2
    parts, legend, angle = [], [], -math.pi / 2
    for i, (label, n) in enumerate(counts.items()):
        color = _COLORS[i % len(_COLORS)]
        legend.append(f'<li><span style="background:{color}"></span>{html.escape(str(label))}: {n:,} ({n / total:.1%})</li>')
        if n == total:
            parts.append(f'<circle cx="{r}" cy="{r}" r="{r}" fill="{color}"/>')
            continue
        end = angle + 2 * math.pi * n / total
        x1, y1 = r + r * math.cos(angle), r + r * math.sin(angle)
        x2, y2 = r + r * math.cos(end), r + r * math.sin(end)
        large = 1 if end - angle > math.pi else 0
        parts.append(f'<path d="M{r},{r} L{x1:.2f},{y1:.2f} A{r},{r} 0 {large} 1 {x2:.2f},{y2:.2f} Z" fill="{color}"/>')
        angle = end
    return (f'<div class="pie"><svg width="{size}" height="{size}" viewBox="0 0 {size} {size}">{"".join(parts)}</svg>'
            f'<ul class="legend">{"".join(legend)}</ul></div>')


def _bars(counts: dict[str, float], width: int = 420, bar_h: int = 16) -> str:
    if not counts:
        return "<p>no data</p>"
    top = max(counts.values()) or 1
    rows = []
    for i, (label, v) in enumerate(counts.items()):
        w = (width - 200) * v / top
        y = i * (bar_h + 4)
        rows.append(f'<text x="0" y="{y + bar_h - 3}">{html.escape(str(label))}</text>'
                    f'<rect x="140" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#4e79a7"/>'
                    f'<text x="{145 + w:.1f}" y="{y + bar_h - 3}">{v:,}</text>')
    return f'<svg width="{width}" height="{len(counts) * (bar_h + 4)}">{"".join(rows)}</svg>'


def _trend(trend: list[dict], width: int = 480, height: int = 160) -> str:
    kinds = sorted({k for t in trend for k in t["per_1000_docs"]})
    if not kinds or len(trend) < 1:
        return "<p>no PII detected</p>"
    top = max(v for t in trend for v in t["per_1000_docs"].values()) or 1
    step = width / max(1, len(trend) - 1)
    lines, legend = [], []
    for i, kind in enumerate(kinds):
        color = _COLORS[i % len(_COLORS)]
        pts = " ".join(f"{j * step:.1f},{height - height * t['per_1000_docs'].get(kind, 0) / top:.1f}" for j, t in enumerate(trend))
        lines.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
        legend.append(f'<li><span style="background:{color}"></span>{kind}</li>')
    return (f'<svg width="{width + 10}" height="{height + 10}">{"".join(lines)}</svg>'
            f'<ul class="legend">{"".join(legend)}</ul><p class="note">detections per 1,000 documents per ingestion batch; peak {top}</p>')


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(data: dict) -> str:
    src = data["sources"]
    parts = [
        f"<h1>Data governance report: {html.escape(str(data['dataset_version']))}</h1>",
        f"<p>id {html.escape(str(data['manifest_id']))}, built {html.escape(str(data['created']))}; stages: "
        f"{html.escape(' → '.join(data['stages']))}</p>",
        "<h2>Sources</h2>",
        _table(["source", "license", "approved by", "docs in", "docs out", "doc share", "tokens (est.)", "token share",
                "duplicate rate"],
               [[n, s.get("license"), (s.get("approval") or {}).get("by"), f"{s['docs_in']:,}", f"{s['docs_out']:,}",
                 f"{s['doc_share']:.1%}", f"{s['tokens_est']:,}", f"{s['token_share']:.1%}", f"{s['duplicate_rate']:.1%}"]
                for n, s in src.items()]),
    ]
    if data["refused_sources"]:
        parts += ["<h3>Refused sources (not read)</h3>",
                  _table(["source", "reason"], [[n, r.get("reason")] for n, r in data["refused_sources"].items()])]
    if data["refused_files"]:
        parts += ["<h3>Refused files (never opened)</h3>",
                  _table(["file", "reason", "matched by"],
                         [[f.get("path"), f.get("reason"), ", ".join(f.get("matched_by", []))] for f in data["refused_files"]])]
    parts += ["<h2>Languages</h2>", _pie(data["languages"]),
              "<h2>Document length (characters)</h2>"]
    for name, s in src.items():
        parts += [f"<h3>{html.escape(name)}</h3>", _bars(s["length_histogram"])]
    parts += ["<h2>Removals by stage and reason</h2>",
              _table(["stage", "reason", "documents"], [[st, code, f"{n:,}"] for st, r in data["removals_by_stage"].items() for code, n in r.items()]),
              "<h2>PII detections</h2>", _bars(data["pii"]["detections"]), _trend(data["pii"]["trend"]),
              "<h2>Quarantine samples (for human review)</h2>"]
    for reason, recs in data["quarantine_samples"].items():
        parts.append(f"<h3>{html.escape(reason)}</h3>")
        parts += [f"<details><summary>{html.escape(str(r['id']))} ({html.escape(str(r['source']))}): "
                  f"{html.escape(str(r['reason']))}</summary><pre>{html.escape(str(r['preview']))}</pre></details>" for r in recs]
    if data.get("multimodal"):
        parts.append(_mm_html(data["multimodal"]))
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}svg text{font-size:11px}"
             ".pie{display:flex;gap:2em;align-items:center}.legend{list-style:none}.legend span{display:inline-block;"
             "width:10px;height:10px;margin-right:6px}pre{white-space:pre-wrap;background:#f6f6f6;padding:6px}.note{color:#666}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>data report</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"


def collect_multimodal(tokens_dir: Path) -> dict:
    """Per-modality governance counts of `mm build` shards (from their manifest)."""
    manifest = _read_json(Path(tokens_dir) / "manifest.json")
    mm = manifest.get("multimodal")
    if mm is None:
        raise DataError(f"{tokens_dir}/manifest.json has no multimodal block; point --mm-tokens at `mm build` output")
    return {"tokens_dir": str(tokens_dir), "samples": mm.get("samples"), "groups": mm.get("groups"),
            "quarantined": mm.get("quarantined"), "discretizers_sha256": mm.get("discretizers_sha256"),
            "segments_by_modality": mm.get("segments_by_modality", {}),
            "tokens_by_modality": mm.get("tokens_by_modality", {}),
            "quarantined_by_reason": mm.get("quarantined_by_reason", {}),
            "splits": {k: v for k, v in manifest.get("totals", {}).items()}}


def _mm_html(mm: dict) -> str:
    tokens = mm["tokens_by_modality"]
    total = sum(tokens.values()) or 1
    parts = ["<h2>Multimodal data (per modality)</h2>",
             f"<p>{mm['samples']:,} samples, {mm['groups']:,} time-slice groups, {mm['quarantined']:,} quarantined; "
             f"shards {html.escape(mm['tokens_dir'])}</p>",
             _table(["modality", "segments"], [[k, f"{v:,}"] for k, v in mm["segments_by_modality"].items()]),
             _table(["token class", "tokens", "share"], [[k, f"{v:,}", f"{v / total:.1%}"] for k, v in tokens.items()]),
             _pie(tokens)]
    if mm["quarantined_by_reason"]:
        parts += ["<h3>Quarantined samples by stage/reason</h3>",
                  _table(["stage/reason", "samples"], [[k, f"{v:,}"] for k, v in mm["quarantined_by_reason"].items()])]
    return "".join(parts)


def write_data_report(clean: Path, out: Path | None = None, mm_tokens: Path | None = None) -> tuple[Path, Path]:
    """Write governance.json and governance.html (into ``out``, default the corpus folder).

    ``mm_tokens``: `mm build` shards whose per-modality counts are added (key ``multimodal``)."""
    clean = Path(clean)
    if not clean.is_dir():
        raise DataError(f"clean corpus {clean} not found; run `pretrainlab data build` first (or set data.out)")
    data = collect(clean)
    if mm_tokens is not None:
        data["multimodal"] = collect_multimodal(Path(mm_tokens))
    out = Path(out) if out else clean
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "governance.json", data)
    atomic_write_text(out / "governance.html", render_html(data))
    return out / "governance.json", out / "governance.html"
