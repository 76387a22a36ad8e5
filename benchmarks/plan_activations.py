"""Check the planner's per-layer activation formula against what autograd really keeps.

Runs one decoder block of pretrainlab's own model forward on the CPU, records
every tensor autograd saves for backward (saved_tensors_hooks, deduplicated by
storage, parameters excluded), and prints the bytes next to the planner's
Llama-block formula (plan.formulas.layer_activation_bytes_llama, scaled from
bf16 autocast as the trainer's bf16 mode runs). Usage:

    .venv/bin/python benchmarks/plan_activations.py [--seq 512] [--batch 2] [--d-model 512] [--heads 8] [--kv-heads 2]
"""

from __future__ import annotations

import argparse

import torch

from pretrainlab.config import ModelConfig
from pretrainlab.model.transformer import Block, rope_tables
from pretrainlab.plan.formulas import layer_activation_bytes_llama


def saved_bytes(block: torch.nn.Module, x: torch.Tensor, cos, sin, autocast: bool) -> int:
    """Unique storages autograd keeps for backward; weights and their bf16 casts excluded."""
    shapes = {tuple(p.shape) for p in block.parameters()} | {tuple(p.shape[::-1]) for p in block.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        if tuple(t.shape) not in shapes:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        y = block(x, cos, sin)
    y.float().sum().backward()
    return sum(seen.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, d_model=args.d_model, n_layers=1, n_heads=args.heads, n_kv_heads=args.kv_heads,
                      max_seq_len=args.seq)
    block = Block(cfg, 0)
    cos, sin = rope_tables(cfg.head_dim, args.seq, cfg.rope_theta)
    x = torch.randn(args.batch, args.seq, args.d_model, requires_grad=True)
    dims = {d for p in block.parameters() for d in p.shape}
    if args.seq * args.batch in dims:
        ap.error("seq*batch equals a weight dimension, so activations and weight casts can't be told apart by shape")
    got = saved_bytes(block, x, cos[None, None], sin[None, None], autocast=True)
    s, b, h = args.seq, args.batch, args.d_model
    kv = args.kv_heads / args.heads
    ours = layer_activation_bytes_llama(s, b, h, args.heads, kv, cfg.ffn_dim, impl="pretrainlab")
    fused = layer_activation_bytes_llama(s, b, h, args.heads, kv, cfg.ffn_dim, impl="fused")
    sbh = s * b * h
    print(f"Block d_model={h} heads={args.heads}/{args.kv_heads} ffn={cfg.ffn_dim} seq={s} batch={b}, bf16 autocast, CPU")
    print(f"measured (saved for backward):       {got / 1e6:8.2f} MB = sbh x {got / sbh:6.2f}")
    print(f"formula 'pretrainlab' (22+4kv/h+8f/h): {ours / 1e6:8.2f} MB = sbh x {ours / sbh:6.2f}  ratio {got / ours:.3f}")
    print(f"formula 'fused' (12 + 4kv/h + 6f/h): {fused / 1e6:8.2f} MB = sbh x {fused / sbh:6.2f}  ratio {got / fused:.3f}")


if __name__ == "__main__":
    main()
