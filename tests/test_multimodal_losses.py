"""Multimodal loss terms: InfoNCE against a reference, action regression, loss combination."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pretrainlab.multimodal.losses import (
    ActionHead, LearnedTemperature, action_loss, capture_hidden, combine_losses, info_nce, masked_mean, paired_infonce,
)
from pretrainlab.tokenizer.spec import VocabSpec


def reference_info_nce(a: np.ndarray, b: np.ndarray, tau: float) -> float:
    """Plain-loop symmetric InfoNCE (CLIP): mean of -log softmax of the matching pair, both directions."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    n = a.shape[0]
    total = 0.0
    for x, y in ((a, b), (b, a)):
        for i in range(n):
            s = [float(x[i] @ y[j]) / tau for j in range(n)]
            m = max(s)
            total += -(s[i] - m - math.log(sum(math.exp(v - m) for v in s)))
    return total / (2 * n)


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_info_nce_equals_the_reference(tau):
    g = np.random.default_rng(0)
    a, b = g.standard_normal((6, 5)), g.standard_normal((6, 5))
    got = float(info_nce(torch.tensor(a), torch.tensor(b), tau))
    assert got == pytest.approx(reference_info_nce(a, b, tau), rel=1e-5)


def test_info_nce_is_low_for_aligned_pairs_and_about_log_b_for_unrelated():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(32, 64, generator=g)
    assert float(info_nce(a, a + 0.01 * torch.randn(32, 64, generator=g))) < 0.01
    unrelated = float(info_nce(a, torch.randn(32, 64, generator=g), temperature=1.0))
    assert abs(unrelated - math.log(32)) < 0.3


def test_learned_temperature_gets_a_gradient_and_stays_clamped():
    t = LearnedTemperature(0.07)
    a = torch.randn(4, 8)
    info_nce(a, a.flip(0), t()).backward()
    assert t.log_tau.grad is not None and float(t().detach()) == pytest.approx(0.07)
    with torch.no_grad():
        t.log_tau.fill_(-10)
    assert float(t().detach()) == pytest.approx(0.01)


def test_loss_combination_weights_each_term_and_reports_it():
    ce, nce, act = torch.tensor(2.0), torch.tensor(3.0), torch.tensor(0.5)
    total, terms = combine_losses(ce, nce, act, lambda_infonce=0.1, lambda_action=2.0)
    assert float(total) == pytest.approx(2.0 + 0.3 + 1.0)
    assert terms == {"loss/ce": 2.0, "loss/infonce": 3.0, "loss/action": 0.5}
    total, terms = combine_losses(ce, nce, act)  # λ = 0: plain cross-entropy
    assert float(total) == 2.0 and set(terms) == {"loss/ce"}


def test_action_head_regression_beats_the_constant_baseline():
    torch.manual_seed(0)
    hidden = torch.randn(8, 10, 16)
    mask = torch.zeros(8, 10, dtype=torch.bool)
    mask[:, 3::3] = True
    values = hidden[..., 0] * 0.7 - 0.2  # the action is a linear function of the state
    head = ActionHead(16)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss = action_loss(head, hidden, mask, values)
        loss.backward()
        opt.step()
    baseline = float(((values[mask] - values[mask].mean()) ** 2).mean())
    assert float(loss.detach()) < 0.05 * baseline
    assert float(action_loss(head, hidden, torch.zeros_like(mask), values).detach()) == 0.0


def test_masked_mean_and_hidden_capture():
    h = torch.arange(12.0).view(1, 4, 3).repeat(2, 1, 1)
    mask = torch.tensor([[True, False, True, False], [False] * 4])
    pooled, has = masked_mean(h, mask)
    assert pooled[0].tolist() == [3.0, 4.0, 5.0] and has.tolist() == [True, False]
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU())
    with capture_hidden(net[0]) as cap:
        net(torch.ones(1, 3))
    assert cap.value.shape == (1, 3)


def test_paired_infonce_pools_image_codes_against_caption_text():
    spec = VocabSpec.build(text_kind="bpe", text_file="t.json", text_sha256="0" * 64, text_size=300, image_codes=8)
    img = spec.id_range("image").start
    ids = torch.tensor([[1, 10, 11, img, img + 1, 2], [1, 12, 13, img + 2, img + 3, 2], [1, 14, 15, 16, 17, 2]])
    hidden = torch.randn(3, 6, 4)
    got = paired_infonce(hidden, ids, spec, "image", "text", temperature=0.1)
    a = hidden[:2, 3:5].mean(1)
    b = hidden[:2, 1:3].mean(1)  # bos/eos are control tokens, not text
    assert float(got) == pytest.approx(float(info_nce(a, b, 0.1)), rel=1e-5)  # row 3 has no image: left out
    assert paired_infonce(hidden[2:], ids[2:], spec) is None
