"""Hand-written autograd functions for the decoder's memory-bound ops: RMSNorm, rotary embedding, cross-entropy.

In eager PyTorch these ops decompose into chains of element-wise kernels whose
intermediates autograd keeps and walks back through (rotary embedding alone was
a fifth of a CPU training step: half-width slices, ``cat`` and the zero-filled
slice gradients). Each function here does the same arithmetic in fewer passes
and keeps fewer tensors for backward:

- ``rms_norm``: the reciprocal RMS from one norm reduction, one output buffer
  scaled in place, and a closed-form backward that reuses its temporaries
  (on the CPU ``F.rms_norm`` is the same six-op composite as the textbook code).
- ``apply_rotary``: writes both rotated halves straight into one output (no
  ``cat``); keeps only the cos/sin tables, since the rotation is linear.
- ``swiglu``: silu(gate) * up with a backward that applies silu's derivative
  in place and writes the up-gradient over the saved silu(gate): two fewer
  fresh (tokens, ffn) buffers than autograd's chain. On the CPU a fresh large
  buffer costs page faults, which is why this and the in-place buffers below
  are measurable.
- ``cross_entropy``: softmax in forward (the log-sum-exp follows from the
  largest probability, so one exp pass serves loss and gradient); backward
  turns the saved probabilities into ``softmax - onehot`` in place instead of
  zero-filling a (tokens, vocab) gradient and running the log-softmax backward.

Results equal the textbook formulas within float rounding; tests/test_fused_ops.py
compares values and gradients with plain autograd. Under ``torch.compile`` every
function here returns the textbook formula instead: Inductor fuses those itself
(and cannot trace writes into strided ``out=`` views).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.compiler import is_compiling


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        d = x.shape[-1]
        # One reduction pass (no x**2 temporary), then one output buffer scaled in place.
        rstd = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(d).add_(eps).rsqrt_()
        y = torch.mul(x, rstd).mul_(weight)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        d = x.shape[-1]
        t = grad * x  # the one product both gradients need; xhat = x * rstd is never materialized
        flat, r = t.reshape(-1, d), rstd.reshape(-1)
        gw = flat.t() @ r if ctx.needs_input_grad[1] else None  # sum over rows of grad * x * rstd
        gx = None
        if ctx.needs_input_grad[0]:
            # d/dx of x*rstd*w = rstd*(g*w) - x * rstd^3 * mean(g*w*x), and mean(g*w*x) = (t @ w) / d
            c = (flat @ weight).mul_(r.pow(3)).div_(d).view(rstd.shape)
            gx = torch.mul(grad, weight, out=t).mul_(rstd)  # t is no longer needed: reuse its memory
            gx.addcmul_(x, c, value=-1.0)
        return gx, gw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * weight over the last dimension, for fp32 x and weight."""
    if is_compiling() or type(x) is not torch.Tensor:  # subclasses (DTensor) know how to run the composite
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
    return _RMSNorm.apply(x, weight, eps)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float, out: torch.Tensor) -> torch.Tensor:
    """Half-split rotation: (x1 cos - sign x2 sin, x2 cos + sign x1 sin), written into ``out``."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    o1, o2 = out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=o1)
    o1.addcmul_(x2, sin, value=-sign)
    torch.mul(x2, cos, out=o2)
    o2.addcmul_(x1, sin, value=sign)
    return out


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        out = torch.empty_like(x)  # x's memory layout: (batch, seq, heads, dim) under the attention's transpose
        ctx.stride = out.stride()
        return _rotate(x, cos, sin, 1.0, out)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        # The gradient goes back through the projection's view: in x's layout, that view needs no copy.
        out = torch.empty_strided(grad.shape, ctx.stride, dtype=grad.dtype, device=grad.device)
        return _rotate(grad, cos, sin, -1.0, out), None, None  # the transpose of a rotation is its inverse


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., head_dim) by angles whose cos/sin (..., head_dim/2) broadcast against x's halves."""
    if is_compiling() or cos.requires_grad or sin.requires_grad:  # the closed-form backward assumes fixed tables
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return _Rotary.apply(x, cos, sin)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        act = F.silu(gate)
        ctx.save_for_backward(gate, up, act)  # what autograd would keep for silu and the product
        return act * up

    @staticmethod
    def backward(ctx, grad):
        gate, up, act = ctx.saved_tensors
        # silu'(gate) applied in place on grad * up, and the up-gradient written over silu(gate), which is
        # ours and not needed after this: two fewer (tokens, ffn) buffers than autograd's chain. A second
        # backward through the same graph therefore raises ("modified by an inplace operation").
        grad_gate = torch.mul(grad, up)
        torch.ops.aten.silu_backward.grad_input(grad_gate, gate, grad_input=grad_gate)
        return grad_gate, act.mul_(grad)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, for same-shaped fp32 tensors."""
    if is_compiling():
        return F.silu(gate) * up
    return _SwiGLU.apply(gate, up)


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        probs = torch.softmax(logits, dim=-1)  # the one exp pass; backward needs exactly these
        # log-sum-exp without a second exp pass: the largest probability is exp(max - lse), which is
        # at least 1/vocab, so lse = max - log(max prob) never under- or overflows.
        lse = logits.amax(-1) - probs.amax(-1).log()
        valid = targets != ignore_index
        safe = torch.where(valid, targets, 0)
        picked = logits.gather(1, safe[:, None]).squeeze(1)
        count = valid.sum()
        loss = ((lse - picked) * valid).sum() / count  # 0/0 = nan when nothing is valid, as F.cross_entropy
        ctx.save_for_backward(probs, safe, valid, count)
        return loss

    @staticmethod
    def backward(ctx, grad):
        probs, safe, valid, count = ctx.saved_tensors
        # d loss / d logits = (softmax - onehot) * valid / count; probs are ours, so reuse their memory.
        g = probs.scatter_add_(1, safe[:, None], torch.full_like(probs[:, :1], -1.0))
        scale = valid.to(g.dtype) * (grad / count)
        return g.mul_(scale[:, None]), None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of (tokens, vocab) fp32 logits over targets that are not ignore_index."""
    if is_compiling() or type(logits) is not torch.Tensor:  # e.g. DTensor logits split over the vocabulary
        return F.cross_entropy(logits, targets, ignore_index=ignore_index)
    return _CrossEntropy.apply(logits, targets, ignore_index)


class _LinearCrossEntropy(torch.autograd.Function):
    """logits = h @ W^T and their mean cross-entropy, with the loss gradient computed chunk by chunk in forward.

    Each chunk's logits are written into the returned tensor, turned into ``softmax - onehot`` in a
    chunk-sized buffer while still in cache, and multiplied straight into grad_h and grad_W; no
    (tokens, vocab) probability tensor is allocated or kept for backward. The returned logits stay
    differentiable: a gradient arriving through them is added in backward.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, ignore_index, chunk_rows):
        ctx.set_materialize_grads(False)
        n, vocab = h.shape[0], weight.shape[0]
        logits = torch.empty(n, vocab, dtype=h.dtype, device=h.device)
        valid = targets != ignore_index
        safe = torch.where(valid, targets, 0)
        count = valid.sum()
        row_scale = (valid.to(h.dtype) / count)[:, None]  # 0/0 = nan when nothing is valid, as F.cross_entropy
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        picked = h.new_empty(n)  # softmax probability of each row's target
        minus_one = h.new_full((min(chunk_rows, n), 1), -1.0)
        chunk = h.new_empty(min(chunk_rows, n), vocab)  # one buffer for every chunk: no allocation per chunk
        for start in range(0, n, chunk_rows):
            end = min(start + chunk_rows, n)
            z = logits[start:end]
            torch.mm(h[start:end], weight.t(), out=z)
            probs = torch.ops.aten._softmax.out(z, -1, False, out=chunk[: end - start])
            idx = safe[start:end, None]
            torch.gather(probs, 1, idx, out=picked[start:end, None])
            # Unscaled softmax - onehot: the per-row loss weights go onto the (rows, d) operands and
            # results, 16x smaller than this (rows, vocab) chunk, so the chunk sees no extra pass.
            g = probs.scatter_add_(1, idx, minus_one[: end - start])
            if grad_h is not None:
                torch.mm(g, weight, out=grad_h[start:end])
            if grad_w is not None:
                hs = h[start:end] * row_scale[start:end]
                if start == 0:
                    torch.mm(g.t(), hs, out=grad_w)
                else:
                    grad_w.addmm_(g.t(), hs)
        if grad_h is not None:
            grad_h.mul_(row_scale)
        nll = picked.log_().neg_()
        # -log(p) is exact while p is a normal float; where it underflowed (a target some 70+ nats below
        # the top logit) take log-sum-exp minus the target logit from the logits instead (rare: no exp pass
        # over the whole tensor otherwise).
        far = ~(nll < 69.0)
        if bool(far.any()):
            rows = far.nonzero().squeeze(1)
            nll[rows] = torch.logsumexp(logits[rows], -1) - logits[rows, safe[rows]]
        loss = (nll * row_scale.squeeze(1)).sum()
        ctx.save_for_backward(h, weight, grad_h, grad_w)
        return loss, logits

    @staticmethod
    def backward(ctx, grad_loss, grad_logits):
        h, weight, grad_h, grad_w = ctx.saved_tensors
        # The saved gradients are ours: scale them in place (no new buffers). A second backward through
        # the same graph therefore raises ("modified by an inplace operation") instead of rescaling.
        gh = gw = None
        if ctx.needs_input_grad[0]:
            gh = grad_h.mul_(grad_loss) if grad_loss is not None else grad_h.zero_()
            if grad_logits is not None:
                gh.addmm_(grad_logits, weight)
        if ctx.needs_input_grad[1]:
            gw = grad_w.mul_(grad_loss) if grad_loss is not None else grad_w.zero_()
            if grad_logits is not None:
                gw.addmm_(grad_logits.t(), h)
        return gh, gw, None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                         chunk_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy, logits) of ``h @ weight.T`` for h (tokens, d) and targets (tokens,), fp32.

    For training: the gradient work happens in forward, so call it only when a backward follows
    (under ``torch.no_grad`` use ``F.linear`` and ``cross_entropy``). chunk_rows defaults to the rows
    whose fp32 logits fill about 4 MB.
    """
    if is_compiling():
        logits = F.linear(h, weight)
        return F.cross_entropy(logits, targets, ignore_index=ignore_index), logits
    if chunk_rows is None:
        chunk_rows = max(16, (1 << 20) // weight.shape[0])
    return _LinearCrossEntropy.apply(h, weight, targets, ignore_index, chunk_rows)
