"""Multimodal loss terms: InfoNCE between paired modalities and action regression.

``L = L_CE + λ1·L_InfoNCE + λ2·L_Action`` (``combine_losses``). The pieces are
model-agnostic: they take final hidden states (``capture_hidden`` hooks a module,
e.g. the decoder's final norm, to get them without changing the model) and the
token ids of the batch, and use the vocabulary spec to find modality spans.

Trained inside the model's forward by ``multimodal/model.py`` (``multimodal.lambda_infonce`` /
``lambda_action``), so the action head and the learned temperature are parameters of the trained model.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pretrainlab.multimodal.modality import MODALITIES, class_table, token_classes


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float | torch.Tensor = 0.07,
             gather: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE of paired rows ``a[i] <-> b[i]`` (B, D); the other rows are the negatives.

    With torch.distributed initialized and ``gather``, negatives come from every rank's batch
    (a differentiable all_gather), and row i of this rank is positive with global row rank*B + i.
    """
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    offset = 0
    all_a, all_b = a, b
    if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_gather

        all_a, all_b = torch.cat(all_gather(a)), torch.cat(all_gather(b))
        offset = dist.get_rank() * a.shape[0]
    labels = torch.arange(a.shape[0], device=a.device) + offset
    logits_ab = a @ all_b.T / temperature
    logits_ba = b @ all_a.T / temperature
    return 0.5 * (F.cross_entropy(logits_ab, labels) + F.cross_entropy(logits_ba, labels))


class LearnedTemperature(nn.Module):
    """τ = exp(log_tau), learned, clamped to [min_tau, 1] (CLIP keeps 1/τ <= 100)."""

    def __init__(self, init: float = 0.07, min_tau: float = 0.01):
        super().__init__()
        self.log_tau = nn.Parameter(torch.tensor([float(init)]).log())  # 1-D: FSDP2 shards no 0-dim parameter
        self.min_tau = min_tau

    def forward(self) -> torch.Tensor:
        return self.log_tau.exp().clamp(self.min_tau, 1.0).squeeze(0)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of hidden (B, T, D) over mask (B, T) per row -> (pooled (B, D), rows that had any position)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    n = m.sum(1)
    return (hidden * m).sum(1) / n.clamp(min=1), n.squeeze(-1) > 0


def modality_masks(ids: torch.Tensor, spec) -> dict[str, torch.Tensor]:
    """Boolean (B, T) masks of text ids (control tokens excluded) and of each code range."""
    classes = token_classes(ids, torch.from_numpy(class_table(spec)).to(ids.device))
    return {name: classes == MODALITIES.index(name) for name in ("text", "image", "audio", "action")}


def paired_infonce(hidden: torch.Tensor, ids: torch.Tensor, spec, first: str = "image", second: str = "text",
                   temperature: float | torch.Tensor = 0.07, gather: bool = True) -> torch.Tensor | None:
    """InfoNCE between the pooled ``first`` and ``second`` tokens of each row (rows with both only); None if < 2 rows.

    ``gather``: see ``info_nce`` (every rank must then have >= 2 pairs); the training model passes False.
    """
    masks = modality_masks(ids, spec)
    pa, ha = masked_mean(hidden, masks[first])
    pb, hb = masked_mean(hidden, masks[second])
    keep = ha & hb
    if int(keep.sum()) < 2:
        return None
    return info_nce(pa[keep], pb[keep], temperature, gather=gather)


class ActionHead(nn.Module):
    """Regresses the continuous action value of an action-bin token from the hidden state that predicts it."""

    def __init__(self, d_model: int):
        super().__init__()
        self.proj = nn.Linear(d_model, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden).squeeze(-1)


def action_loss(head: ActionHead, hidden: torch.Tensor, target_mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Mean squared error at positions where ``target_mask`` (B, T) marks a next token that is an action bin.

    ``values`` (B, T) holds the continuous value of that next token (ignored elsewhere). Position t's
    hidden state predicts token t+1, as for the language-model loss.
    """
    if not bool(target_mask.any()):
        return head(hidden).sum() * 0.0  # a zero that still gives every head parameter a gradient
    pred = head(hidden)[target_mask]
    return F.mse_loss(pred.float(), values[target_mask].float())


def combine_losses(ce: torch.Tensor, infonce: torch.Tensor | None = None, action: torch.Tensor | None = None,
                   lambda_infonce: float = 0.0, lambda_action: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """L = L_CE + λ1·L_InfoNCE + λ2·L_Action; returns the total and every term for logging."""
    total = ce
    terms = {"loss/ce": float(ce.detach())}
    if infonce is not None and lambda_infonce:
        total = total + lambda_infonce * infonce
        terms["loss/infonce"] = float(infonce.detach())
    if action is not None and lambda_action:
        total = total + lambda_action * action
        terms["loss/action"] = float(action.detach())
    return total, terms


class capture_hidden:
    """Context manager keeping the output of ``module`` (e.g. ``model.norm``) of the last forward in ``.value``."""

    def __init__(self, module: nn.Module):
        self.module, self.value, self._h = module, None, None

    def __enter__(self) -> "capture_hidden":
        self._h = self.module.register_forward_hook(lambda m, i, o: setattr(self, "value", o))
        return self

    def __exit__(self, *exc) -> None:
        self._h.remove()
