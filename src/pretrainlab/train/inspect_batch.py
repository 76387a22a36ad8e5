"""`pretrainlab data inspect-batch`: show one training micro-batch exactly as the model sees it.

Draws micro-batch N with the run's loader settings (seed, mixture, packing),
prints each row's source, document boundaries and positions, checks that the
attention mask the model would build lets no token see another document, and
writes an HTML page with the decoded text (boundaries marked) and an SVG of
each row's attention mask: the visible form of the "ghost attention" pitfall.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch

from pretrainlab.config import ProjectConfig
from pretrainlab.fsio import atomic_write_text
from pretrainlab.model.attention import dense_doc_mask
from pretrainlab.model.transformer import positions_in_document
from pretrainlab.progress import console
from pretrainlab.tokenizer.vocab import load_tokenizer
from pretrainlab.train.loader import MixtureLoader


def _mask_svg(mask: np.ndarray, doc_ids: np.ndarray, size: int = 360) -> str:
    """Attention mask (query rows × key columns) as SVG: one rect per allowed run, doc edges in red."""
    t = mask.shape[0]
    cell = size / t
    parts = [f'<svg xmlns:svg="svg" width="{size}" height="{size}" viewBox="0 0 {size} {size}" '
             f'style="background:#f4f4f4;border:1px solid #999">']
    for q in range(t):
        allowed = np.flatnonzero(mask[q])
        if allowed.size == 0:
            continue
        # contiguous runs of allowed keys
        breaks = np.flatnonzero(np.diff(allowed) > 1)
        starts = np.concatenate([[allowed[0]], allowed[breaks + 1]])
        ends = np.concatenate([allowed[breaks], [allowed[-1]]])
        for a, b in zip(starts, ends):
            parts.append(f'<rect x="{a * cell:.2f}" y="{q * cell:.2f}" width="{(b - a + 1) * cell:.2f}" '
                         f'height="{cell:.2f}" fill="#2b6cb0"/>')
    for i in np.flatnonzero(np.diff(doc_ids) != 0) + 1:
        parts.append(f'<line x1="{i * cell:.2f}" y1="0" x2="{i * cell:.2f}" y2="{size}" stroke="#e53e3e" stroke-width="0.6"/>')
        parts.append(f'<line x1="0" y1="{i * cell:.2f}" x2="{size}" y2="{i * cell:.2f}" stroke="#e53e3e" stroke-width="0.6"/>')
    parts.append("</svg>")
    return "".join(parts)


def cross_document_leaks(mask: np.ndarray, doc_ids: np.ndarray) -> int:
    """Number of (query, key) pairs the mask allows across documents or into the future."""
    t = mask.shape[0]
    same = doc_ids[:, None] == doc_ids[None, :]
    causal = np.tril(np.ones((t, t), dtype=bool))
    return int((mask & ~(same & causal)).sum())


def inspect_batch(cfg: ProjectConfig, index: int = 0, out: Path | None = None, rows: int | None = None) -> dict:
    tok = load_tokenizer(cfg.tokenize_tokenizer_dir)
    tc = cfg.train
    loader = MixtureLoader(
        cfg.train_tokens_dir, tc.seq_len, tc.micro_batch, tc.seed, mix=cfg.mix, packing=cfg.packing,
        eos_id=tok.eos_id, pad_id=tok.pad_id,
    )
    for _ in range(index):
        loader.next_batch()
    batch = loader.next_batch()
    doc_ids = batch.doc_ids if batch.doc_ids is not None else torch.zeros_like(batch.inputs)
    if batch.doc_ids is not None:
        mask = dense_doc_mask(batch.doc_ids)[:, 0].numpy()
        positions = positions_in_document(batch.doc_ids).numpy()
    else:  # plain causal: every earlier token is visible, documents or not
        t = batch.inputs.shape[1]
        mask = np.broadcast_to(np.tril(np.ones((t, t), dtype=bool)), (batch.inputs.shape[0], t, t))
        positions = np.broadcast_to(np.arange(t), batch.inputs.shape)
    n_rows = min(rows or batch.inputs.shape[0], batch.inputs.shape[0])
    report = {"micro_batch": index, "doc_mask": cfg.packing.doc_mask, "packing": cfg.packing.mode, "rows": []}
    sections = []
    for r in range(n_rows):
        ids = batch.inputs[r].numpy()
        docs = doc_ids[r].numpy()
        targets = batch.targets[r].numpy()
        # Leaks are measured against the true document structure (eos boundaries), whatever mask is in use.
        from pretrainlab.train.packing import doc_ids_from_eos

        true_docs = docs if batch.doc_ids is not None else doc_ids_from_eos(ids, tok.eos_id)
        leaks = cross_document_leaks(mask[r], true_docs)
        n_docs = int(len(np.unique(docs)))
        pads = int((ids == tok.pad_id).sum()) if cfg.packing.mode == "best_fit" else 0
        ignored = int((targets == -100).sum())
        report["rows"].append({"documents": n_docs, "cross_document_pairs": leaks, "pad_tokens": pads,
                               "ignored_targets": ignored, "first_positions": positions[r][:8].tolist()})
        console.print(
            f"row {r}: {n_docs} document(s), positions restart at "
            f"{[int(i) for i in np.flatnonzero(positions[r] == 0)][:12]}, pad {pads}, ignored targets {ignored}, "
            f"cross-document attention pairs {leaks}" + ("  [LEAK]" if leaks else "")
        )
        spans = []
        for d in np.unique(docs):
            piece = tok.decode(ids[docs == d].tolist())
            spans.append(f'<span class="doc d{int(d) % 6}" title="doc {int(d)}">{html.escape(piece)}</span>')
        sections.append(
            f"<h3>row {r}: {n_docs} documents, cross-document pairs {leaks}</h3>"
            f'<div class="row"><div class="text">{"<b class=sep>‖</b>".join(spans)}</div>'
            f"<div>{_mask_svg(mask[r], docs)}</div></div>"
        )
    report["total_cross_document_pairs"] = sum(r["cross_document_pairs"] for r in report["rows"])
    if out is not None:
        page = (
            "<!doctype html><meta charset=utf-8><title>inspect-batch</title><style>"
            "body{font-family:sans-serif;margin:2em}.row{display:flex;gap:1em}.text{white-space:pre-wrap;"
            "font-family:monospace;font-size:11px;max-width:55em;max-height:360px;overflow:auto}"
            ".sep{color:#e53e3e}.d0{background:#fefcbf}.d1{background:#c6f6d5}.d2{background:#bee3f8}"
            ".d3{background:#fed7e2}.d4{background:#e9d8fd}.d5{background:#feebc8}</style>"
            f"<h1>micro-batch {index}</h1><p>packing {html.escape(cfg.packing.mode)}, document mask "
            f"{cfg.packing.doc_mask}; blue = key visible to query (rows = queries), red lines = document "
            f"boundaries. Total cross-document pairs: {report['total_cross_document_pairs']}</p>"
            + "".join(sections)
        )
        atomic_write_text(out, page)
        console.print(f"wrote {out}")
    return report
