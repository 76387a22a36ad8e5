"""Mixture-of-Experts feed-forward: top-k routing, capacity and dropping, aux losses, grouped dispatch.

``MoE`` replaces the dense SwiGLU of selected blocks (``model.moe.layers``). Each
token's router logits (fp32) go through a softmax; the top-k experts get the
token, weighted by their (optionally renormalized) gate probabilities. Expert
capacity is ``ceil(capacity_factor * tokens * k / experts)``; assignments past it
are dropped (first choices of all tokens fill experts before second choices,
earlier tokens first), and a dropped assignment simply contributes nothing, so
the token passes through the block's residual. ``dropless`` never drops, and
neither does evaluation or generation (eval mode): dropping is a training-time
throughput device, so a model's outputs at inference never depend on what else
is in the batch, and they equal the (dropless) Hugging Face export's.

Dispatch sorts the (token, expert) assignments by expert and runs all experts
with one grouped matrix product per projection (``torch._grouped_mm``), a padded
``bmm``, or a loop over experts (``model.moe.dispatch``), then scatters the
weighted outputs back with ``index_add``. No Python loop over tokens.

Losses (read by ``Transformer.forward`` after each call): the Switch load-balance
loss ``E * sum_i f_i * P_i`` (f_i: share of assignments routed to expert i,
P_i: mean router probability of i; 1.0 for perfectly uniform routing) and the
router z-loss ``mean(logsumexp(logits)^2)``.

The layer knows nothing of process groups: expert parallelism injects a handle
as ``moe.ep`` (see ``pretrainlab.train.parallel_ep``) that moves grouped tokens
to the ranks holding their experts and back. Routing statistics for monitoring
accumulate in ``moe.stats`` while training; ``pop_stats()`` reads and resets them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from pretrainlab.config import ModelConfig, MoEConfig

DISPATCH_MODES = ("grouped_mm", "bmm", "loop")


def has_grouped_mm() -> bool:
    return hasattr(torch, "_grouped_mm")


def resolve_dispatch(mode: str, device: torch.device, dtype: torch.dtype) -> str:
    """The concrete expert-compute path for ``mode`` ('auto' picks per device).

    auto: torch._grouped_mm on CUDA with bf16 inputs (its fast path); otherwise
    the padded bmm, which measured fastest on the CPU (benchmarks/moe.py:
    ~1.6x grouped_mm, ~3x the per-expert loop at 2,048 tokens, 8 experts).
    """
    if mode == "grouped_mm" and not has_grouped_mm():
        return "bmm"
    if mode != "auto":
        return mode
    if device.type == "cuda" and dtype == torch.bfloat16 and has_grouped_mm():
        return "grouped_mm"
    return "bmm"


# --------------------------------------------------------------------------- routing arithmetic


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, factor: float) -> int:
    """Assignments one expert accepts: ceil(factor * tokens * k / experts), at least 1."""
    return max(1, math.ceil(factor * num_tokens * top_k / num_experts))


def expert_counts(expert_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Assignments per expert: ``bincount`` without its host sync on CUDA (it reads the max id to size the output)."""
    counts = torch.zeros(num_experts, dtype=torch.long, device=expert_ids.device)
    return counts.scatter_add_(0, expert_ids, torch.ones_like(expert_ids))


def load_balance_loss(probs: torch.Tensor, expert_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch-style auxiliary loss E * sum_i f_i * P_i over (tokens, experts) probabilities.

    f_i (share of the top-k assignments routed to i, counted before dropping) is
    not differentiable; the gradient flows through P_i. Uniform routing gives 1.
    """
    counts = expert_counts(expert_ids.reshape(-1), num_experts).to(probs.dtype)
    f = counts / expert_ids.numel()
    p = probs.mean(dim=0)
    return num_experts * torch.sum(f * p)


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE z-loss: mean over tokens of logsumexp(logits)^2 (keeps router logits small)."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


@dataclass
class DispatchPlan:
    """Which assignments run where, grouped by expert (kept assignments only)."""

    token_idx: torch.Tensor  # (N,) token of each kept assignment, grouped by expert
    weights: torch.Tensor  # (N,) gate weight of each kept assignment
    counts: torch.Tensor  # (E,) kept assignments per expert (sums to N)
    demand: torch.Tensor  # (E,) assignments routed per expert before dropping
    keep: torch.Tensor  # (tokens, k) whether each routed assignment was kept


def plan_dispatch(
    expert_ids: torch.Tensor, weights: torch.Tensor, num_experts: int, capacity: int | None
) -> DispatchPlan:
    """Sort (token, choice) assignments by expert; drop those past ``capacity`` (None: keep all).

    Assignments are flattened choice-major (every token's first choice, then every
    token's second choice, ...) and stably sorted, so within an expert first
    choices and earlier tokens win the capacity slots.
    """
    t, k = expert_ids.shape
    flat_expert = expert_ids.t().reshape(-1)
    flat_token = torch.arange(t, device=expert_ids.device).repeat(k)
    flat_weight = weights.t().reshape(-1)
    order = torch.argsort(flat_expert, stable=True)
    demand = expert_counts(flat_expert, num_experts)
    if capacity is None:
        keep_flat = torch.ones_like(flat_expert, dtype=torch.bool)
        counts = demand
    else:
        sorted_expert = flat_expert[order]
        starts = torch.cumsum(demand, 0) - demand
        position = torch.arange(order.numel(), device=order.device) - starts[sorted_expert]
        kept_sorted = position < capacity
        keep_flat = torch.zeros_like(kept_sorted).scatter(0, order, kept_sorted)
        order = order[kept_sorted]
        counts = demand.clamp(max=capacity)
    return DispatchPlan(
        token_idx=flat_token[order],
        weights=flat_weight[order],
        counts=counts,
        demand=demand,
        keep=keep_flat.view(k, t).t(),
    )


# --------------------------------------------------------------------------- experts


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class Experts(nn.Module):
    """``num_experts`` SwiGLU experts stored as stacked (experts, out, in) weights.

    ``forward(x, counts)``: ``x`` holds tokens grouped by expert (``counts[i]``
    rows for expert i, in order); returns each row's expert output.
    """

    def __init__(self, num_experts: int, d_model: int, hidden: int, dispatch: str = "auto"):
        super().__init__()
        self.num_experts, self.d_model, self.hidden, self.dispatch = num_experts, d_model, hidden, dispatch
        self.w_gate = nn.Parameter(torch.empty(num_experts, hidden, d_model))
        self.w_up = nn.Parameter(torch.empty(num_experts, hidden, d_model))
        self.w_down = nn.Parameter(torch.empty(num_experts, d_model, hidden))

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        x = x.to(dtype)
        wg, wu, wd = (w.to(dtype) for w in (self.w_gate, self.w_up, self.w_down))
        mode = resolve_dispatch(self.dispatch, x.device, dtype)
        if x.shape[0] == 0:
            return x.new_zeros(0, self.d_model) + 0 * (wg.sum() + wu.sum() + wd.sum())  # keep params in the graph
        if mode == "grouped_mm":
            return self._grouped(x, counts, wg, wu, wd)
        if mode == "bmm":
            return self._padded_bmm(x, counts, wg, wu, wd)
        return self._loop(x, counts, wg, wu, wd)

    @staticmethod
    def _grouped(x, counts, wg, wu, wd):
        offs = torch.cumsum(counts, 0).to(torch.int32)
        h = F.silu(torch._grouped_mm(x, wg.transpose(-2, -1), offs=offs)) * torch._grouped_mm(
            x, wu.transpose(-2, -1), offs=offs
        )
        return torch._grouped_mm(h, wd.transpose(-2, -1), offs=offs)

    @staticmethod
    def _padded_bmm(x, counts, wg, wu, wd):
        e = counts.numel()
        cap = int(counts.max())
        expert = torch.repeat_interleave(torch.arange(e, device=x.device), counts)
        position = torch.arange(x.shape[0], device=x.device) - (torch.cumsum(counts, 0) - counts)[expert]
        buf = x.new_zeros(e, cap, x.shape[1])
        buf[expert, position] = x
        h = F.silu(torch.bmm(buf, wg.transpose(1, 2))) * torch.bmm(buf, wu.transpose(1, 2))
        return torch.bmm(h, wd.transpose(1, 2))[expert, position]

    @staticmethod
    def _loop(x, counts, wg, wu, wd):
        outs = []
        # unbind: one backward node per weight instead of a full-size zero gradient per expert slice
        for xi, g, u, d in zip(x.split(counts.tolist()), wg.unbind(0), wu.unbind(0), wd.unbind(0)):
            outs.append((F.silu(xi @ g.t()) * (xi @ u.t())) @ d.t())
        return torch.cat(outs)


class SharedExperts(nn.Module):
    """``n`` always-on SwiGLU experts, fused into one SwiGLU of width n * hidden."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w_gate = nn.Linear(d_model, hidden, bias=False)
        self.w_up = nn.Linear(d_model, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class ExpertHandle(Protocol):
    """What an expert-parallel handle does: run expert-grouped tokens through the experts that own them."""

    def __call__(self, x: torch.Tensor, counts: torch.Tensor, experts: Experts) -> torch.Tensor: ...


# --------------------------------------------------------------------------- the layer


STAT_KEYS = ("demand", "kept", "assignments", "logit_sum", "logit_sq_sum", "logit_count", "aux", "z", "calls")


class MoE(nn.Module):
    """Token-choice top-k MoE feed-forward (see the module docstring)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.moe is None:
            raise ValueError("MoE needs ModelConfig.moe to be set")
        self.cfg: MoEConfig = cfg.moe
        self.num_experts, self.top_k = cfg.moe.num_experts, cfg.moe.top_k
        self.router = nn.Linear(cfg.d_model, self.num_experts, bias=False)
        self.experts = Experts(self.num_experts, cfg.d_model, cfg.expert_dim, cfg.moe.dispatch)
        self.shared = (
            SharedExperts(cfg.d_model, cfg.moe.num_shared_experts * cfg.expert_dim) if cfg.moe.num_shared_experts else None
        )
        self.ep: ExpertHandle | None = None  # injected by expert parallelism, never set by the model
        self.aux_loss: torch.Tensor | None = None
        self.z_loss: torch.Tensor | None = None
        self.stats: dict[str, torch.Tensor] = {}

    def capacity(self, num_tokens: int) -> int | None:
        """Per-expert capacity for a batch of ``num_tokens``; None (dropless) in eval mode or when configured."""
        if self.cfg.dropless or not self.training:
            return None
        return expert_capacity(num_tokens, self.num_experts, self.top_k, self.cfg.capacity_factor)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, probs, top-k weights, top-k expert ids) for flat tokens ``x`` (tokens, d)."""
        inp = x.float()
        if self.training and self.cfg.router_jitter > 0:
            eps = self.cfg.router_jitter
            inp = inp * torch.empty_like(inp).uniform_(1.0 - eps, 1.0 + eps)
        with torch.autocast(x.device.type, enabled=False):  # routing decisions stay in fp32 under bf16 autocast
            logits = F.linear(inp, self.router.weight.float())
            probs = logits.softmax(dim=-1)
            top_w, top_i = probs.topk(self.top_k, dim=-1)
            if self.cfg.normalize_top_k:
                top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        return logits, probs, top_w, top_i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits, probs, top_w, top_i = self.route(flat)
        plan = plan_dispatch(top_i, top_w, self.num_experts, self.capacity(flat.shape[0]))
        self.aux_loss = load_balance_loss(probs, top_i, self.num_experts)
        self.z_loss = router_z_loss(logits)

        grouped = flat[plan.token_idx]
        run = self.ep if self.ep is not None else (lambda xs, counts, experts: experts(xs, counts))
        y = run(grouped, plan.counts, self.experts)
        y = y * plan.weights.unsqueeze(-1).to(y.dtype)
        out = torch.zeros(flat.shape[0], shape[-1], dtype=y.dtype, device=x.device).index_add_(0, plan.token_idx, y)
        if self.shared is not None:
            out = out + self.shared(flat).to(out.dtype)
        if self.training and not _in_backward():  # an activation-checkpoint recompute must not count twice
            self._accumulate(plan, logits)
        return out.to(x.dtype).view(shape)

    # ---- monitoring hooks (plain tensors, no logging here)

    @torch.no_grad()
    def _accumulate(self, plan: DispatchPlan, logits: torch.Tensor) -> None:
        new = {
            "demand": plan.demand.float(),
            "kept": plan.counts.sum().float(),
            "assignments": torch.full((), float(plan.keep.numel()), device=logits.device),  # no host-to-device copy
            "logit_sum": logits.sum(),
            "logit_sq_sum": logits.pow(2).sum(),
            "logit_count": torch.full((), float(logits.numel()), device=logits.device),
            "aux": self.aux_loss.detach(),
            "z": self.z_loss.detach(),
            "calls": torch.full((), 1.0, device=logits.device),
        }
        for key, value in new.items():
            self.stats[key] = self.stats[key] + value if key in self.stats else value.clone()

    def pop_stats(self) -> dict[str, torch.Tensor]:
        """Routing statistics summed over the training forwards since the last call; resets them."""
        stats, self.stats = self.stats, {}
        return stats


def _in_backward() -> bool:
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


def moe_layers(model: nn.Module) -> list[tuple[int, MoE]]:
    """(block index, MoE layer) for every MoE layer of a Transformer (or anything with .layers)."""
    blocks = getattr(model, "layers", None)
    if blocks is None:
        return [(i, m) for i, m in enumerate(mm for mm in model.modules() if isinstance(mm, MoE))]
    return [(i, b.mlp) for i, b in enumerate(blocks) if isinstance(getattr(b, "mlp", None), MoE)]


def naive_moe_forward(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    """Reference: a per-expert mask-and-gather loop (the way HF Mixtral's eager path does it).

    Used by tests and as the peer in benchmarks/moe.py; with capacity it
    reuses the layer's dispatch plan for the keep mask only.
    """
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    _, _, top_w, top_i = layer.route(flat)
    capacity = layer.capacity(flat.shape[0])
    keep = True if capacity is None else plan_dispatch(top_i, top_w, layer.num_experts, capacity).keep
    out = torch.zeros_like(flat)
    ex = layer.experts
    for e in range(layer.num_experts):
        tok, choice = torch.where((top_i == e) & keep)
        if tok.numel() == 0:
            continue
        xi = flat[tok]
        yi = (F.silu(xi @ ex.w_gate[e].t()) * (xi @ ex.w_up[e].t())) @ ex.w_down[e].t()
        out.index_add_(0, tok, yi * top_w[tok, choice].unsqueeze(-1).to(yi.dtype))
    if layer.shared is not None:
        out = out + layer.shared(flat)
    return out.view(shape)

