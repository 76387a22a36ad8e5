"""The hand-written autograd functions equal the textbook formulas, in value and gradient."""

import pytest
import torch
import torch.nn.functional as F

from pretrainlab.config import ModelConfig
from pretrainlab.model.fused_ops import apply_rotary, cross_entropy, linear_cross_entropy, rms_norm, swiglu
from pretrainlab.model.transformer import Transformer


def _rms_ref(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope_ref(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def test_rms_norm_passes_gradcheck_and_matches_the_formula():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.rand(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-5), (x, w))
    torch.testing.assert_close(rms_norm(x, w, 1e-5), _rms_ref(x, w, 1e-5))


def test_rms_norm_fp32_gradients_match_autograd_of_the_formula():
    torch.manual_seed(0)
    x = torch.randn(4, 16, 64, requires_grad=True)
    w = (1 + 0.1 * torch.randn(64)).requires_grad_()
    g = torch.randn(4, 16, 64)
    ours = torch.autograd.grad(rms_norm(x, w, 1e-5), (x, w), g)
    ref = torch.autograd.grad(_rms_ref(x, w, 1e-5), (x, w), g)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("per_position", [False, True])
def test_rotary_passes_gradcheck_on_strided_input(per_position):
    torch.manual_seed(0)
    b, t, h, d = 2, 5, 3, 8
    # (batch, seq, heads, dim) transposed to (batch, heads, seq, dim), as the attention layer does
    x = torch.randn(b, t, h, d, dtype=torch.float64).transpose(1, 2).requires_grad_()
    angles = torch.rand(b if per_position else 1, 1, t, d // 2, dtype=torch.float64) * 6
    cos, sin = angles.cos(), angles.sin()
    assert torch.autograd.gradcheck(lambda a: apply_rotary(a, cos, sin), (x,))
    torch.testing.assert_close(apply_rotary(x, cos, sin), _rope_ref(x, cos, sin))


def test_rotary_with_trainable_tables_falls_back_to_autograd():
    x = torch.randn(1, 1, 4, 8, dtype=torch.float64)
    angles = torch.rand(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    out = apply_rotary(x, angles.cos(), angles.sin())
    (grad,) = torch.autograd.grad(out.sum(), angles)
    (ref,) = torch.autograd.grad(_rope_ref(x, angles.cos(), angles.sin()).sum(), angles)
    torch.testing.assert_close(grad, ref)


def test_swiglu_matches_autograd_values_and_gradients():
    torch.manual_seed(0)
    gate = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    up = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    out, ref = swiglu(gate, up), F.silu(gate) * up
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (gate, up), grad, retain_graph=True)
    for a, b in zip(ours, torch.autograd.grad(ref, (gate, up), grad)):
        torch.testing.assert_close(a, b)
    # backward writes over the saved silu(gate): a second backward through the graph refuses
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(out, (gate, up), grad)


def test_cross_entropy_matches_torch_with_ignored_targets():
    torch.manual_seed(0)
    logits = (3 * torch.randn(12, 30, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(0, 30, (12,))
    targets[[1, 5]] = -100
    ours = cross_entropy(logits, targets)
    ref = F.cross_entropy(logits, targets, ignore_index=-100)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, logits, retain_graph=True)[0],
                               torch.autograd.grad(ref, logits)[0])
    # backward reuses the saved probabilities' memory: a second backward through the graph refuses
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(ours, logits)


def test_cross_entropy_is_exact_for_extreme_logits():
    """The log-sum-exp comes from the largest probability, which never underflows."""
    logits = torch.tensor([[0.0, -200.0, 300.0], [1e4, -1e4, 0.0]], requires_grad=True)
    targets = torch.tensor([1, 1])
    ours, ref = cross_entropy(logits, targets), F.cross_entropy(logits, targets)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(ref, logits)[0])


@pytest.mark.parametrize("chunk_rows", [4, 7, 64])
def test_linear_cross_entropy_matches_linear_then_cross_entropy(chunk_rows):
    torch.manual_seed(0)
    h = torch.randn(21, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(13, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 13, (21,))
    targets[3] = -100
    loss, logits = linear_cross_entropy(h, w, targets, chunk_rows=chunk_rows)
    ref_logits = F.linear(h, w)
    ref = F.cross_entropy(ref_logits, targets, ignore_index=-100)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(loss, ref)
    # the returned logits are differentiable too: a term on them adds its gradient to the loss's
    grads = torch.autograd.grad(3 * loss + logits.sin().sum(), (h, w))
    ref_grads = torch.autograd.grad(3 * ref + ref_logits.sin().sum(), (h, w))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    grads = torch.autograd.grad(linear_cross_entropy(h, w, targets, chunk_rows=chunk_rows)[0], (h, w))
    ref_grads = torch.autograd.grad(F.cross_entropy(F.linear(h, w), targets), (h, w))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_linear_cross_entropy_is_exact_for_extreme_logits_and_refuses_a_second_backward():
    """Targets far below the top logit (their softmax probability underflows) still get the exact loss."""
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    w = torch.tensor([[300.0, 0.0], [-200.0, 1e4], [0.0, -1e4]], requires_grad=True)
    targets = torch.tensor([1, 2, 0])
    loss, _ = linear_cross_entropy(h, w, targets, chunk_rows=2)
    ref = F.cross_entropy(F.linear(h, w), targets)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, ref)
    grads = torch.autograd.grad(loss, (h, w), retain_graph=True)
    for a, b in zip(grads, torch.autograd.grad(ref, (h, w))):
        torch.testing.assert_close(a, b)
    # backward scales the gradients it computed in forward in place: a second pass refuses
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(loss, (h, w))


def test_model_training_step_equals_the_unfused_head():
    """The fused head (used when a backward follows) gives the loss and gradients of logits -> cross-entropy."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)
    m = Transformer(cfg)
    x, y = torch.randint(0, 97, (3, 16)), torch.randint(0, 97, (3, 16))
    logits, loss = m(x, y)
    loss.backward()
    fused = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    ref_logits, _ = m(x)
    ref = F.cross_entropy(ref_logits.view(-1, 97), y.view(-1))
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(logits, ref_logits)
    for n, p in m.named_parameters():
        torch.testing.assert_close(fused[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
