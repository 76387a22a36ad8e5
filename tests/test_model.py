"""The decoder: shapes, causality, KV cache, GQA and parameter accounting."""

import torch

from pretrainlab.config import ModelConfig
from pretrainlab.model.transformer import KVCache, Transformer, count_params, flops_per_token


def tiny(**kw):
    base = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    base.update(kw)
    return ModelConfig(**base)


def test_logits_shape_and_loss_at_init_is_near_uniform():
    torch.manual_seed(0)
    m = Transformer(tiny())
    x = torch.randint(0, 97, (3, 16))
    logits, loss = m(x, torch.randint(0, 97, (3, 16)))
    assert logits.shape == (3, 16, 97)
    assert abs(loss.item() - torch.log(torch.tensor(97.0)).item()) < 0.3


def test_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    m = Transformer(tiny()).eval()
    x = torch.randint(0, 97, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 97
    a, _ = m(x)
    b, _ = m(y)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6)
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_kv_cache_decoding_matches_full_forward():
    torch.manual_seed(0)
    m = Transformer(tiny()).eval()
    x = torch.randint(0, 97, (2, 20))
    full, _ = m(x)
    cache = KVCache.empty(2)
    parts = [m(x[:, :7], cache=cache)[0]]
    parts += [m(x[:, i : i + 1], cache=cache)[0] for i in range(7, 20)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_explicit_positions_and_mask_equal_the_default_causal_path():
    torch.manual_seed(0)
    m = Transformer(tiny()).eval()
    x = torch.randint(0, 97, (2, 12))
    pos = torch.arange(12).expand(2, 12)
    mask = torch.ones(12, 12, dtype=torch.bool).tril().expand(2, 1, 12, 12)
    assert torch.allclose(m(x)[0], m(x, positions=pos, attn_mask=mask)[0], atol=1e-5)


def test_param_count_from_config_matches_module_and_tying_shares_weights():
    for tie in (True, False):
        cfg = tiny(tie_embeddings=tie)
        m = Transformer(cfg)
        assert count_params(cfg)["total"] == m.num_params()
        assert (m.lm_head.weight is m.embed.weight) == tie


def test_flops_per_token_follows_6n_plus_attention():
    cfg = tiny(tie_embeddings=False)
    p = count_params(cfg)
    expected = 6 * (p["total"] - p["embedding"]) + 12 * cfg.n_layers * cfg.d_model * 32
    assert flops_per_token(cfg, 32) == expected
