"""Which modality a token id belongs to: the classes per-modality loss weights, logging and perplexity use.

``text`` is the trained text vocabulary minus its control tokens; ``image`` (video frames too),
``audio`` and ``action`` are the code ranges of the vocabulary spec; ``structure`` is every
other id: control tokens (eos, pad, ...), the modality/camera markers and the timestamps.
"""

from __future__ import annotations

import numpy as np
import torch

MODALITIES = ("text", "image", "audio", "action", "structure")
STRUCTURE = MODALITIES.index("structure")


def class_table(spec) -> np.ndarray:
    """int8 array over the whole vocabulary: the index into MODALITIES of every id."""
    table = np.full(spec.total_size, STRUCTURE, dtype=np.int8)
    table[len(spec.control_ids):spec.text_size] = MODALITIES.index("text")
    for name in ("image", "audio", "action"):
        r = spec.id_range(name)
        table[r.start:r.stop] = MODALITIES.index(name)
    return table


def token_classes(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """MODALITIES index of each id (ids < 0, i.e. ignored targets, get -1)."""
    out = table[ids.clamp(min=0)].long()
    return torch.where(ids < 0, torch.full_like(out, -1), out)


def per_class_sums(ce: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of ``ce`` per class, count per class), each (len(MODALITIES),); classes -1 are skipped."""
    keep = classes >= 0
    c = classes[keep]
    n = len(MODALITIES)
    sums = torch.zeros(n, device=ce.device, dtype=torch.float32).index_add_(0, c, ce[keep].float())
    counts = torch.bincount(c, minlength=n).to(torch.float32)
    return sums, counts


def weighted_ce_term(ce: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The term that turns the model's mean CE, sum(ce)/n, into sum(w[class]·ce)/n (n: non-ignored targets).

    ``ce`` and ``classes`` are flat per-target; ignored targets (class -1) count nowhere.
    """
    keep = classes >= 0
    w = torch.where(keep, weights[classes.clamp(min=0)] - 1.0, torch.zeros_like(ce))
    return (w * ce).sum() / keep.sum().clamp(min=1)
