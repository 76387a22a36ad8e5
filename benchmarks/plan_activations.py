"""Check the planner's per-layer activation formula against what autograd really keeps.

Runs one decoder block of pretrainlab's own model forward on the CPU, records
every tensor autograd saves for backward (saved_tensors_hooks, deduplicated by
storage, parameters excluded), and prints the bytes next to the planner's
Llama-block formula (plan.formulas.layer_activation_bytes_llama, scaled from
2-byte to the dtype used). Usage:

    .venv/bin/python benchmarks/plan_activations.py [--seq 512] [--batch 2] [--d-model 512] [--heads 8] [--kv-heads 2]
"""

from __future__ import annotations

import argparse

import torch

from pretrainlab.config import ModelConfig
from pretrainlab.model.transformer import Block, rope_tables
from pretrainlab.plan.formulas import layer_activation_bytes_llama


def saved_bytes(block: torch.nn.Module, x: torch.Tensor, cos, sin) -> tuple[int, list[tuple[str, tuple, int]]]:
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    seen: dict[int, int] = {}
    detail: list[tuple[str, tuple, int]] = []

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen and ptr != x.untyped_storage().data_ptr() or ptr == 0:
            seen[ptr] = t.untyped_storage().nbytes()
            detail.append((str(t.dtype), tuple(t.shape), seen[ptr]))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = block(x, cos, sin)
    y.sum().backward()
    # The block's input is kept by the first norm; count it as the formula does (2sbh at 2 bytes).
    return sum(seen.values()) + x.numel() * x.element_size(), detail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, d_model=args.d_model, n_layers=1, n_heads=args.heads, n_kv_heads=args.kv_heads,
                      max_seq_len=args.seq)
    block = Block(cfg, 0)
    cos, sin = rope_tables(cfg.head_dim, args.seq, cfg.rope_theta)
    x = torch.randn(args.batch, args.seq, args.d_model, requires_grad=True)
    got, detail = saved_bytes(block, x, cos[None, None], sin[None, None])
    s, b, h = args.seq, args.batch, args.d_model
    kv = args.kv_heads / args.heads
    # The formula counts 2-byte activations; this run is fp32, so scale by 2.
    flash = 2 * layer_activation_bytes_llama(s, b, h, args.heads, kv, cfg.ffn_dim, flash=True)
    eager = 2 * layer_activation_bytes_llama(s, b, h, args.heads, kv, cfg.ffn_dim, flash=False)
    sbh = s * b * h * 4
    print(f"block d_model={h} heads={args.heads}/{args.kv_heads} ffn={cfg.ffn_dim} seq={s} batch={b}, fp32 on CPU")
    print(f"measured saved for backward: {got / 1e6:8.2f} MB = {got / sbh:6.2f} x sbh(4 B)")
    print(f"formula, flash attention:    {flash / 1e6:8.2f} MB = {flash / sbh:6.2f} x sbh(4 B)")
    print(f"formula, scores kept:        {eager / 1e6:8.2f} MB = {eager / sbh:6.2f} x sbh(4 B)")
    print(f"measured / formula(flash) = {got / flash:.3f}")
    if args.verbose:
        for dtype, shape, n in detail:
            print(f"  {dtype:15s} {str(shape):28s} {n / sbh:6.3f} sbh")


if __name__ == "__main__":
    main()
