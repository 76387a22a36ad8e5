"""The multimodal section of the run report: per-modality CE curves, loss terms and ``mm_eval.json``.

Reads the ``ce/<modality>``, ``loss/...`` and ``infonce/temperature`` keys that
``multimodal/train_callback.py`` adds to the train records, and ``<run>/mm_eval.json``
written by ``mm eval`` (or at the end of a multimodal run). Returns "" for runs with
neither, so text runs' reports are unchanged. Registered as the report's "multimodal"
section (``pretrainlab.reporting`` imports this module).
"""

from __future__ import annotations

import json
from pathlib import Path

from pretrainlab.htmlkit import esc, fmt_num, points, svg_line_chart, table
from pretrainlab.monitor.rundata import RunData, register_section
from pretrainlab.multimodal.evaluate import EVAL_FILE
from pretrainlab.multimodal.modality import MODALITIES


_ORDER = {m: i for i, m in enumerate((*MODALITIES, "all"))}


@register_section("multimodal", 40)
def _mm_report_section(run: RunData) -> str:
    return mm_section(run.path, run.train)


def mm_section(run_dir: Path, train: list[dict]) -> str:
    try:
        ev = json.loads((Path(run_dir) / EVAL_FILE).read_text())
    except (OSError, ValueError):
        ev = None
    ce_keys = [f"ce/{m}" for m in MODALITIES if any(f"ce/{m}" in r for r in train)]
    term_keys = sorted({k for r in train for k in r if k.startswith("loss/")} | ({"ce_loss"} if any("ce_loss" in r for r in train) else set()))
    if not ce_keys and not ev:
        return ""
    body = ["<h2>Multimodal</h2>"]
    charts = []
    if ce_keys:
        charts.append(svg_line_chart({k.split("/", 1)[1]: points(train, "step", k) for k in ce_keys},
                                     "Cross-entropy per target modality (unweighted)", "step", "CE"))
    if term_keys:
        charts.append(svg_line_chart({k: points(train, "step", k) for k in term_keys}, "Loss terms", "step", "loss"))
    if any("infonce/temperature" in r for r in train):
        charts.append(svg_line_chart({"τ": points(train, "step", "infonce/temperature")}, "Learned InfoNCE temperature",
                                     "step", "τ"))
    if charts:
        body.append('<div class="charts">' + "".join(charts) + "</div>")
    if not ev:
        body.append('<div class="muted">No mm_eval.json yet (run `pretrainlab mm eval RUN`).</div>')
        return "\n".join(body)
    body.append(f"<h3>Cross-modal evaluation (step {esc(ev.get('step'))}, {esc(ev.get('docs'))} held-out documents)</h3>")
    ret = ev.get("retrieval")
    if ret:
        ch = ret["chance"]
        body.append(table([(d.replace("_", " → ").replace("to → ", ""), ret[d]["r1"], ch["r1"], ret[d]["r5"], ch["r5"])
                            for d in ("caption_to_image", "image_to_caption")],
                           ("retrieval", "R@1", "chance R@1", "R@5", "chance R@5")))
        body.append(f'<div class="muted">{esc(ret["pairs"])} held-out pairs in {esc(ret["pools"])} pools of '
                    f'{esc(fmt_num(ret["candidates_mean"]))} candidates with different captions; scored by '
                    "log p(image codes | caption).</div>")
    a = ev.get("action")
    if a:
        body.append(table([("action head", a.get("mse_head")), ("LM's most likely bin (bin centre)", a.get("mse_lm_bins")),
                            (f"constant baseline ({a.get('baseline_kind')})", a.get("mse_baseline"))],
                           ("action predictor", "MSE")))
    ppl = ev.get("perplexity") or {}
    if ppl:
        body.append(table([(k, (ev.get("targets") or {}).get(k, ""), (ev.get("ce") or {}).get(k, ""), v)
                            for k, v in sorted(ppl.items(), key=lambda kv: _ORDER.get(kv[0], 99))],
                           ("target modality", "targets", "CE", "perplexity")))
    return "\n".join(body)
