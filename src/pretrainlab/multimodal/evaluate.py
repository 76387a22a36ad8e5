"""`mm eval RUN`: cross-modal evaluation of a multimodal run on the held-out split of its shards.

Writes ``<run>/mm_eval.json`` (the run report shows it); also run at the end of a multimodal
training run (``multimodal.eval_at_end``). Three measures, each beside its baseline:

- **Retrieval Recall@1/5, caption -> image and image -> caption**, by the model's own likelihood:
  ``L[i, j] = log p(codes of image i | caption j)`` (the document order is caption, then image).
  Image -> caption ranks captions j by ``L[i, j]``; caption -> image ranks images i by
  ``log softmax_j L[i, j]`` (p(caption j | image i) under a uniform prior over the candidate
  captions, so an image that is likely under every caption does not win every query).
  Held-out image/caption pairs are dealt into pools of ``multimodal.eval_candidates`` pairs whose
  captions all differ (two identical captions would make a "wrong" hit right); chance is k/N for
  a pool of N. Ties count against the model.
- **Action MSE** of the run's action head (hidden state before each action bin -> continuous
  value) and of the language model's own most likely action bin (decoded to its bin centre),
  against the constant baseline: the per-dimension mean of the training actions.
- **Per-modality perplexity**: exp(mean CE) over held-out targets of each class of
  ``modality.MODALITIES`` (text, image, audio, action, structure) and over all of them.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pretrainlab.errors import DataError, UserError
from pretrainlab.fsio import atomic_write_json
from pretrainlab.multimodal.modality import MODALITIES, class_table, per_class_sums, token_classes
from pretrainlab.progress import console, track

EVAL_FILE = "mm_eval.json"
BATCH = 16


def caption_image_pairs(doc: np.ndarray, spec) -> list[tuple[int, tuple[int, ...], tuple[int, ...]]]:
    """(timestamp id, caption ids, image span incl. its start/end markers) of every group that has a caption
    followed directly by a stand-alone image (not a camera frame)."""
    ts, text_end = spec.id_range("timestamp"), spec.text_size
    start, end = spec.token_id("<|image_start|>"), spec.token_id("<|image_end|>")
    first_text = len(spec.control_ids)
    ids = np.asarray(doc).tolist()
    out = []
    for g, tok in enumerate(ids):
        if tok not in ts:
            continue
        j = g + 1
        while j < len(ids) and first_text <= ids[j] < text_end:
            j += 1
        if j == g + 1 or j >= len(ids) or ids[j] != start or end not in ids[j:]:
            continue
        k = ids.index(end, j)
        out.append((tok, tuple(ids[g + 1:j]), tuple(ids[j:k + 1])))
    return out


def retrieval_pools(pairs: list, size: int) -> list[list]:
    """Deal pairs into pools of at most ``size`` with pairwise-different captions (pools of < 2 dropped)."""
    by_caption: dict[tuple, list] = {}
    for p in pairs:
        by_caption.setdefault(p[1], []).append(p)
    pools = []
    for r in range(max((len(v) for v in by_caption.values()), default=0)):
        round_r = [v[r] for v in by_caption.values() if len(v) > r]
        pools += [round_r[i:i + size] for i in range(0, len(round_r), size)]
    return [p for p in pools if len(p) >= 2]


@torch.no_grad()
def _forward(model, rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Right-padded batch forward -> (log-probs (B, T, V) float32, final hidden states or None)."""
    width = max(len(r) for r in rows)
    x = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.as_tensor(r)
    box: dict = {}
    hook = model.norm.register_forward_hook(lambda m, i, o: box.setdefault("h", o))
    try:
        logits, _ = model(x.to(device))
    finally:
        hook.remove()
    return F.log_softmax(logits.float(), dim=-1), box.get("h")


def score_pool(model, pool: list, pad_id: int, device) -> np.ndarray:
    """L[i, j] = log p(image i's codes and end marker | timestamp + caption j + image start)."""
    n = len(pool)
    rows, spans = [], []
    for i in range(n):
        for j in range(n):
            prefix = [pool[j][0], *pool[j][1], pool[i][2][0]]
            rows.append(prefix + list(pool[i][2][1:]))
            spans.append((len(prefix), len(rows[-1])))
    scores = np.zeros(n * n)
    for b in range(0, len(rows), BATCH * 4):
        logp, _ = _forward(model, rows[b:b + BATCH * 4], pad_id, device)
        for r in range(logp.shape[0]):
            a, e = spans[b + r]
            tgt = torch.as_tensor(rows[b + r][a:e], device=logp.device)
            scores[b + r] = float(logp[r, a - 1:e - 1].gather(-1, tgt[:, None]).sum())
    return scores.reshape(n, n)


def recall(scores: np.ndarray, k: int) -> np.ndarray:
    """Per query (row) whether the true item (the diagonal) ranks within the top k; ties count against it."""
    true = np.diag(scores)[:, None]
    better = (scores >= true).sum(1) - 1  # other candidates scoring at least as high
    return better < k


def evaluate_retrieval(model, pairs: list, size: int, pad_id: int, device) -> dict | None:
    pools = retrieval_pools(pairs, size)
    if not pools:
        return None
    hits = {"image_to_caption": {1: [], 5: []}, "caption_to_image": {1: [], 5: []}}
    chance = {1: [], 5: []}
    for pool in track(pools, "mm eval: retrieval", unit="pools"):
        L = score_pool(model, pool, pad_id, device)
        post = L - np.logaddexp.reduce(L, axis=1, keepdims=True)  # log p(caption j | image i), uniform prior
        n = len(pool)
        for k in (1, 5):
            hits["image_to_caption"][k] += recall(L, k).tolist()
            hits["caption_to_image"][k] += recall(post.T, k).tolist()
            chance[k] += [min(k, n) / n] * n
    out = {"pairs": sum(len(p) for p in pools), "pools": len(pools),
           "candidates_mean": float(np.mean([len(p) for p in pools])),
           "chance": {f"r{k}": float(np.mean(v)) for k, v in chance.items()}}
    for direction, by_k in hits.items():
        out[direction] = {f"r{k}": float(np.mean(v)) for k, v in by_k.items()}
    return out


def _action_dims(tokens: np.ndarray, positions: np.ndarray, spec) -> np.ndarray:
    """Action dimension of each action-bin position: its offset after the last <|action_start|>."""
    starts = np.flatnonzero(np.asarray(tokens) == spec.token_id("<|action_start|>"))
    return positions - starts[np.searchsorted(starts, positions, side="right") - 1] - 1


def _side(reader, name: str) -> np.ndarray | None:
    path = reader.bin_path.with_name(f"{reader.split}.{name}.npy")
    return np.load(path) if path.is_file() else None


def evaluate_docs(model, spec, heldout, train, head, binner, max_docs: int, pad_id: int, device) -> dict:
    """Per-modality CE/perplexity and action MSE (head, LM bins, constant baseline) over held-out documents."""
    table = torch.as_tensor(class_table(spec))
    sums, counts = torch.zeros(len(MODALITIES)), torch.zeros(len(MODALITIES))
    n_docs = min(heldout.num_docs, max_docs)
    pos, vals = _side(heldout, "action_pos"), _side(heldout, "action_values")
    act = spec.id_range("action")
    head_err, bin_err, base_err, preds = [], [], [], 0
    baseline = None
    if pos is not None and pos.size:
        tpos, tvals = _side(train, "action_pos"), _side(train, "action_values")
        tdims = _action_dims(train.tokens(0, train.num_tokens), tpos, spec)
        baseline = np.asarray([tvals[tdims == d].mean() for d in range(int(tdims.max()) + 1)])
        dims = _action_dims(heldout.tokens(0, heldout.num_tokens), pos, spec)
    for b in track(range(0, n_docs, BATCH), "mm eval: held-out docs", unit="batches"):
        bounds = [heldout.doc_bounds(i) for i in range(b, min(b + BATCH, n_docs))]
        rows = [np.asarray(heldout.tokens(s, e), dtype=np.int64)[:model.cfg.max_seq_len + 1].tolist() for s, e in bounds]
        logp, hidden = _forward(model, [r[:-1] for r in rows], pad_id, device)
        tgt = torch.full(logp.shape[:2], -100, dtype=torch.long)
        for r, row in enumerate(rows):
            tgt[r, :len(row) - 1] = torch.as_tensor(row[1:])
        ce = -logp.gather(-1, tgt.clamp(min=0).to(logp.device)[..., None]).squeeze(-1).cpu()
        s, c = per_class_sums(ce, token_classes(tgt, table))
        sums += s
        counts += c
        if baseline is None:
            continue
        for r, (s0, e0) in enumerate(bounds):
            sel = (pos >= s0) & (pos < s0 + len(rows[r]))
            t = pos[sel] - s0 - 1  # the position whose hidden state predicts the action bin
            if not t.size:
                continue
            true, d = vals[sel], dims[sel]
            base_err.append((baseline[d] - true) ** 2)
            lm_bin = logp[r, t][:, act.start:act.stop].argmax(-1).cpu().numpy()
            if binner is not None:
                centre = binner.low[d] + (lm_bin + 0.5) * (binner.high[d] - binner.low[d]) / binner.bins
                bin_err.append((centre - true) ** 2)
            if head is not None:
                with torch.no_grad():
                    pred = head(hidden[r, torch.as_tensor(t, device=hidden.device)]).float().cpu().numpy()
                head_err.append((pred - true) ** 2)
            preds += t.size
    ppl = {name: math.exp(float(sums[i] / counts[i])) for i, name in enumerate(MODALITIES) if counts[i]}
    out = {
        "docs": n_docs,
        "perplexity": {**ppl, "all": math.exp(float(sums.sum() / counts.sum()))} if counts.sum() else {},
        "ce": {name: float(sums[i] / counts[i]) for i, name in enumerate(MODALITIES) if counts[i]},
        "targets": {name: int(counts[i]) for i, name in enumerate(MODALITIES)},
    }
    if baseline is not None and preds:
        mean = lambda errs: float(np.concatenate(errs).mean()) if errs else None  # noqa: E731
        out["action"] = {"values": preds, "mse_head": mean(head_err), "mse_lm_bins": mean(bin_err),
                         "mse_baseline": mean(base_err), "baseline": [round(float(v), 6) for v in baseline],
                         "baseline_kind": "per-dimension mean of the training actions"}
    return out


def run_eval(model, cfg, head=None, out_dir: Path | None = None, device="cpu", step: int | None = None) -> dict:
    """Evaluate ``model`` (+ the action head) on cfg's multimodal shards; write mm_eval.json into out_dir."""
    from pretrainlab.multimodal.build import mm_paths
    from pretrainlab.multimodal.discretize import Discretizers
    from pretrainlab.tokenizer.shards import ShardReader
    from pretrainlab.tokenizer.vocab import load_tokenizer

    t0 = time.perf_counter()
    tok = load_tokenizer(mm_paths(cfg)["tokenizer"])
    spec = tok.spec
    tokens_dir = Path(cfg.train_tokens_dir)
    source = cfg.multimodal.source
    try:
        heldout = ShardReader(tokens_dir, source, "heldout", tokenizer_sha256=tok.sha256)
        train = ShardReader(tokens_dir, source, "train", tokenizer_sha256=tok.sha256)
    except DataError as exc:
        raise DataError(f"{exc} (mm eval reads the multimodal shards of train.tokens, source "
                        f"'{source}'; build them with `pretrainlab mm build`)") from None
    if not heldout.num_docs:
        raise DataError(f"{tokens_dir}/{source}: no held-out documents; rebuild with multimodal.heldout_fraction > 0")
    disc_dir = mm_paths(cfg)["discretizers"]
    binner = Discretizers.load(disc_dir).action if (disc_dir / "discretizers.json").is_file() else None
    m = cfg.multimodal
    was_training = model.training
    model.eval()
    try:
        pairs = []
        for i in range(min(heldout.num_docs, m.eval_max_docs)):
            pairs += caption_image_pairs(heldout.doc(i), spec)
        if pairs:  # every caption is scored with every image of its pool: the longest combination must fit
            longest_image = max(len(p[2]) for p in pairs)
            pairs = [p for p in pairs if 1 + len(p[1]) + longest_image <= model.cfg.max_seq_len]
        result = {"step": step, "tokens_dir": str(tokens_dir), "heldout_docs": heldout.num_docs,
                  "retrieval": evaluate_retrieval(model, pairs, m.eval_candidates, tok.pad_id, device),
                  **evaluate_docs(model, spec, heldout, train, head, binner, m.eval_max_docs, tok.pad_id, device)}
    finally:
        model.train(was_training)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / EVAL_FILE, result)
    console.print(summary_line(result))
    return result


def summary_line(r: dict) -> str:
    parts = ["mm eval:"]
    ret = r.get("retrieval")
    if ret:
        parts.append(f"retrieval over {ret['pairs']} pairs (pools of {ret['candidates_mean']:.1f}): "
                     f"caption->image R@1 {ret['caption_to_image']['r1']:.3f} R@5 {ret['caption_to_image']['r5']:.3f}, "
                     f"image->caption R@1 {ret['image_to_caption']['r1']:.3f} R@5 {ret['image_to_caption']['r5']:.3f} "
                     f"(chance {ret['chance']['r1']:.3f} / {ret['chance']['r5']:.3f});")
    else:
        parts.append("no held-out caption/image pairs;")
    a = r.get("action")
    if a:
        head = f"head {a['mse_head']:.4f}, " if a["mse_head"] is not None else ""
        bins = f"LM bins {a['mse_lm_bins']:.4f}, " if a["mse_lm_bins"] is not None else ""
        parts.append(f"action MSE {head}{bins}constant baseline {a['mse_baseline']:.4f};")
    if r.get("perplexity"):
        parts.append("perplexity " + ", ".join(f"{k} {v:.2f}" for k, v in r["perplexity"].items()))
    return " ".join(parts)


def eval_run(run_dir: str | Path, which: str | None = None, device: str = "cpu") -> dict:
    """`mm eval RUN`: rebuild the model and the action head from a checkpoint, evaluate, write mm_eval.json."""
    import json

    from pretrainlab.train.checkpoint import load_model

    run_dir = Path(run_dir)
    model, cfg, path = load_model(run_dir, which, device)
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"{path}/state.json unreadable; pick another checkpoint with --checkpoint STEP") from None
    head = saved_action_head(path, state, cfg.model.d_model) if cfg.multimodal.lambda_action else None
    if head is not None:
        head = head.to(device).eval()
    return run_eval(model, cfg, head, out_dir=run_dir, device=device, step=state.get("step"))


def saved_action_head(path: Path, state: dict, d_model: int):
    """The action head of a checkpoint (model parameters ``mm.action.*``; older runs kept it in callback state)."""
    from pretrainlab.multimodal.losses import ActionHead
    from pretrainlab.multimodal.train_callback import from_json
    from pretrainlab.train.checkpoint import load_model_state

    head = ActionHead(d_model)
    old = state.get("callbacks", {}).get("MultimodalLosses", {}).get("head")
    if old is not None:
        head.load_state_dict(from_json(old))
        return head
    prefix = "mm.action."
    template = {prefix + k: v for k, v in head.state_dict().items()}
    try:
        saved = load_model_state(path, dict(template))
        head.load_state_dict({k.removeprefix(prefix): saved[k] for k in template})
    except (KeyError, RuntimeError):
        return None  # saved without an action head
    return head
