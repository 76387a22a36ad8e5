"""Trains the multimodal loss terms: L = L_CE + λ1·L_InfoNCE + λ2·L_Action, through the trainer's ``extra_losses`` hook.

``MultimodalLosses`` keeps the trainer model-agnostic: it hooks the model's final norm to read the
last hidden states of each forward (``capture_hidden``'s idea, kept registered for the run), pools the
image codes and the caption text of each row for InfoNCE, and regresses the continuous action value of
every action bin from the hidden state that predicts it with a small ``ActionHead`` it owns (its own
AdamW, stepped with the model's optimizer, saved in the checkpoint's callback state).

Continuous action values live beside the shards (``<split>.action_pos.npy``/``action_values.npy``,
positions in the flat ``.bin``). The loader hands rows of tokens, not offsets, so this callback maps
positions itself: it indexes every document that holds actions by a hash of its tokens (eos included)
and, for each whole document found in a row, puts the stored values at the matching target positions.
With ``packing.mode: best_fit`` every document is whole; ``concat`` cuts documents across rows
(their action values could not be matched), so the action term refuses it with a one-line error.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from pretrainlab.multimodal.losses import ActionHead, LearnedTemperature, action_loss, paired_infonce
from pretrainlab.multimodal.modality import MODALITIES, class_table, per_class_sums, token_classes, weighted_ce_term
from pretrainlab.progress import console
from pretrainlab.train.callbacks import Callback

if TYPE_CHECKING:
    from pretrainlab.train.trainer import TrainContext


def _key(tokens: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(tokens, dtype=np.int64).tobytes(), digest_size=16).digest()


def action_index(readers: dict) -> dict[bytes, tuple[np.ndarray, np.ndarray]]:
    """{hash of a document's tokens (eos included): (offsets of its action bins in the doc, their values)}."""
    out: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
    for reader in readers.values():
        pos_path = reader.bin_path.with_name(f"{reader.split}.action_pos.npy")
        val_path = reader.bin_path.with_name(f"{reader.split}.action_values.npy")
        if not pos_path.is_file() or not val_path.is_file():
            continue
        pos, vals = np.load(pos_path), np.load(val_path)
        index = np.asarray(reader.index)
        doc_of = np.searchsorted(index, pos, side="right") - 1
        for d in np.unique(doc_of):
            sel = doc_of == d
            start, end = int(index[d]), int(index[d + 1])
            out[_key(reader.tokens(start, end))] = (pos[sel] - start, vals[sel].astype(np.float32))
    return out


def action_targets(inputs: torch.Tensor, targets: torch.Tensor, eos_id: int,
                   index: dict[bytes, tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, values), both (B, T) aligned with ``targets``: the continuous value of each action-bin target."""
    B, T = targets.shape
    mask = np.zeros((B, T), dtype=bool)
    values = np.zeros((B, T), dtype=np.float32)
    x, y = inputs.cpu().numpy(), targets.cpu().numpy()
    for r in range(B):
        full = np.concatenate([x[r], y[r, -1:]])  # row tokens 0..T; target t is full[t + 1]
        ends = np.flatnonzero(full == eos_id)
        start = 0
        for e in ends:
            hit = index.get(_key(full[start:e + 1]))
            if hit is not None:
                t = start + hit[0] - 1
                ok = (t >= 0) & (t < T)
                mask[r, t[ok]] = True
                values[r, t[ok]] = hit[1][ok]
            start = int(e) + 1
    return torch.from_numpy(mask).to(targets.device), torch.from_numpy(values).to(targets.device)


def _to_json(obj):
    if isinstance(obj, torch.Tensor):
        return {"__tensor__": obj.detach().cpu().float().tolist(), "dtype": str(obj.dtype).removeprefix("torch.")}
    if isinstance(obj, dict):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    return obj


def _from_json(obj):
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return torch.tensor(obj["__tensor__"], dtype=getattr(torch, obj["dtype"]))
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


class MultimodalLosses(Callback):
    """λ1·InfoNCE(image, caption) + λ2·MSE(action head) + per-modality CE weighting, added to every micro-batch's loss.

    Also logs the unweighted CE of each target modality (``ce/<modality>``) on log steps (every step
    when ``multimodal.ce_weights`` is set, since the weighting needs it anyway), the learned τ
    (``infonce/temperature``), and runs ``mm eval`` at the end of the run (``multimodal.eval_at_end``).
    """

    def __init__(self, ctx: "TrainContext"):
        from pretrainlab.errors import UserError
        from pretrainlab.multimodal.build import mm_paths
        from pretrainlab.tokenizer.vocab import load_tokenizer

        m = ctx.cfg.multimodal
        if m.lambda_action and ctx.cfg.packing.mode != "best_fit":
            raise UserError(
                f"multimodal.lambda_action needs packing.mode=best_fit: {ctx.cfg.packing.mode} packing cuts documents "
                "across rows and a cut document's action values cannot be matched; set --set packing.mode=best_fit "
                "(and multimodal.max_doc_tokens <= train.seq_len + 1)")
        self.cfg = ctx.cfg
        self.lambda_infonce, self.lambda_action, self.temperature = m.lambda_infonce, m.lambda_action, m.temperature
        tok = load_tokenizer(mm_paths(ctx.cfg)["tokenizer"])
        self.spec, self.eos_id = tok.spec, tok.eos_id
        self.head = ActionHead(ctx.cfg.model.d_model).to(ctx.device)
        self.tau = LearnedTemperature(m.temperature).to(ctx.device) if m.learn_temperature else None
        params = [*self.head.parameters(), *(self.tau.parameters() if self.tau is not None else [])]
        self.head_optimizer = torch.optim.AdamW(params, lr=m.action_head_lr, weight_decay=0.0)
        self.index = action_index(ctx.loader.readers) if self.lambda_action else {}
        self.world = ctx.world
        self.table = torch.as_tensor(class_table(self.spec), device=ctx.device)
        self.weights = None
        if m.ce_weights:
            w = torch.ones(len(MODALITIES), device=ctx.device)
            for name, v in m.ce_weights.items():
                w[MODALITIES.index(name)] = v
            self.weights = w
        self.ce_sums = self.ce_counts = None
        self.hidden: torch.Tensor | None = None
        self._hook = ctx.raw_model.norm.register_forward_hook(lambda mod, i, o: setattr(self, "hidden", o))

    def _log_step(self, ctx) -> bool:
        step = ctx.step + 1  # the step being computed
        return step % ctx.cfg.train.log_every == 0 or step == ctx.cfg.train.steps

    def extra_losses(self, ctx, batch, logits) -> dict[str, torch.Tensor]:
        hidden = self.hidden
        out: dict[str, torch.Tensor] = {}
        if self.weights is not None or self._log_step(ctx):
            ce = F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), ignore_index=-100,
                                 reduction="none")
            classes = token_classes(batch.targets.flatten(), self.table)
            sums, counts = per_class_sums(ce.detach(), classes)
            self.ce_sums = sums if self.ce_sums is None else self.ce_sums + sums
            self.ce_counts = counts if self.ce_counts is None else self.ce_counts + counts
            if self.weights is not None:  # model loss = sum(ce)/n; this term makes it sum(w·ce)/n
                out["loss/ce_weighting"] = weighted_ce_term(ce, classes, self.weights)
        if self.lambda_infonce:
            tau = self.tau() if self.tau is not None else self.temperature
            nce = paired_infonce(hidden, batch.inputs, self.spec, "image", "text", tau)
            out["loss/infonce"] = self.lambda_infonce * (nce if nce is not None else hidden.sum() * 0.0)
        if self.lambda_action:
            mask, values = action_targets(batch.inputs, batch.targets, self.eos_id, self.index)
            out["loss/action"] = self.lambda_action * action_loss(self.head, hidden, mask, values)
        self.hidden = None  # one forward, one use; validation forwards never reach here
        return out

    def on_after_backward(self, ctx, metrics):
        if self.world > 1:  # the head is outside the data-parallel wrapper: average its gradients by hand
            import torch.distributed as dist

            if self.ce_sums is not None:
                dist.all_reduce(self.ce_sums)
                dist.all_reduce(self.ce_counts)
            for p in self.head_optimizer.param_groups[0]["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)

    def on_step_end(self, ctx, metrics):
        if not metrics.get("skipped"):
            self.head_optimizer.step()
        self.head_optimizer.zero_grad(set_to_none=True)
        if self.ce_sums is not None:
            for i, name in enumerate(MODALITIES):
                if self.ce_counts[i]:
                    metrics[f"ce/{name}"] = float(self.ce_sums[i] / self.ce_counts[i])
            self.ce_sums = self.ce_counts = None
        if self.tau is not None:
            metrics["infonce/temperature"] = float(self.tau().detach())

    def on_train_end(self, ctx):
        self._hook.remove()
        if not self.cfg.multimodal.eval_at_end or not ctx.is_main:
            return
        if ctx.world > 1:  # a sharded model's forward is collective: evaluate the saved run instead
            console.print(f"mm eval: skipped under {ctx.world} ranks; run `pretrainlab mm eval {ctx.run_dir}`")
            return
        from pretrainlab.multimodal.evaluate import run_eval

        self.head.eval()
        run_eval(ctx.raw_model, self.cfg, self.head if self.lambda_action else None, out_dir=ctx.run_dir,
                 device=ctx.device, step=ctx.step)

    def state_dict(self) -> dict:
        state = {"head": _to_json(self.head.state_dict()), "optimizer": _to_json(self.head_optimizer.state_dict())}
        if self.tau is not None:
            state["temperature"] = _to_json(self.tau.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        device = next(self.head.parameters()).device
        self.head.load_state_dict({k: v.to(device) for k, v in _from_json(state["head"]).items()})
        if self.tau is not None and "temperature" in state:
            self.tau.load_state_dict({k: v.to(device) for k, v in _from_json(state["temperature"]).items()})
        opt = _from_json(state["optimizer"])
        opt["state"] = {int(k): {n: (t.to(device) if isinstance(t, torch.Tensor) and n != "step" else t)
                                 for n, t in v.items()} for k, v in opt["state"].items()}
        self.head_optimizer.load_state_dict(opt)


def _trains_on_mm_shards(cfg) -> bool:
    try:
        return "multimodal" in json.loads((Path(cfg.train_tokens_dir) / "manifest.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def build_multimodal_callbacks(ctx: "TrainContext") -> list[Callback]:
    """[MultimodalLosses] when a multimodal loss term or CE weight is set or train.tokens holds `mm build` shards;
    [] otherwise (text runs)."""
    m = ctx.cfg.multimodal
    wanted = m.lambda_infonce or m.lambda_action or m.ce_weights or _trains_on_mm_shards(ctx.cfg)
    return [MultimodalLosses(ctx)] if wanted else []
