"""Benchmark: training tokens/s and MFU of our model vs transformers' LlamaForCausalLM, same dims and recipe.

Usage:
  .venv/bin/python benchmarks/train_throughput.py [--workdir work] [--threads 2] [--steps 6] [--rounds 3]
      [--d-model 256 --layers 4 --heads 4 --kv-heads 2 --seq 256 --micro-batch 8] [--device cpu|cuda]
      [--precision fp32|bf16] [--compile]

Both models get the same shapes, batch, dtype, thread count, AdamW (fused on CUDA)
and SDPA attention; runs alternate ours/peer for several rounds and the median
is reported, because this machine is shared and noisy. Also measured: the share
of step time spent in our data loader (real token shards from --workdir, made
by the quickstart), and the stall of an async checkpoint save relative to a
synchronous one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(model_fn, opt, batch, steps, device, amp):
    x, y = batch
    for _ in range(2):  # warm-up (and compile)
        with amp():
            loss = model_fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        with amp():
            loss = model_fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return steps * x.numel() / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="work")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=None, help="default: the --workdir tokenizer's size, else 4096")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--skip-loader", action="store_true")
    args = ap.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    from pretrainlab.config import ModelConfig
    from pretrainlab.model.transformer import Transformer, flops_per_token
    from pretrainlab.monitor.flops import gpu_peak_flops, measure_cpu_matmul_flops

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.vocab is None:
        from pretrainlab.errors import UserError
        from pretrainlab.tokenizer.vocab import load_tokenizer

        try:
            args.vocab = load_tokenizer(Path(args.workdir) / "tokenizer").vocab_size
        except UserError:
            args.vocab = 4096
    cfg = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                      n_kv_heads=args.kv_heads, ffn_hidden=args.ffn, max_seq_len=args.seq, tie_embeddings=True)
    hf_cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=cfg.ffn_dim,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=args.seq, rms_norm_eps=1e-5,
                         tie_word_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(0)
    ours = Transformer(cfg).to(device)
    peer = LlamaForCausalLM(hf_cfg).to(device)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_peer = sum(p.numel() for p in peer.parameters())
    fused = device.type == "cuda"
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=fused)
    opt_peer = torch.optim.AdamW(peer.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=fused)
    x = torch.randint(3, args.vocab, (args.micro_batch, args.seq), device=device)
    y = torch.randint(0, args.vocab, (args.micro_batch, args.seq), device=device)

    def amp():
        if args.precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return torch.autocast(device_type=device.type, enabled=False)

    def run_ours(a, b):
        return ours(a, b)[1]

    def run_peer(a, b):
        # HF shifts labels internally; pass the already-shifted targets as inputs+labels equivalent work.
        return peer(input_ids=a, labels=b).loss

    f_ours, f_peer = run_ours, run_peer
    if args.compile:
        f_ours, f_peer = torch.compile(run_ours), torch.compile(run_peer)

    ours_tps, peer_tps = [], []
    for _ in range(args.rounds):
        ours_tps.append(time_steps(f_ours, opt_ours, (x, y), args.steps, device, amp))
        peer_tps.append(time_steps(f_peer, opt_peer, (x, y), args.steps, device, amp))
    o, p = statistics.median(ours_tps), statistics.median(peer_tps)
    fpt = flops_per_token(cfg, args.seq)
    if device.type == "cuda":
        peak = gpu_peak_flops(torch.cuda.get_device_name(device), args.precision) or float("nan")
        peak_src = "datasheet dense peak"
    else:
        peak = measure_cpu_matmul_flops()
        peak_src = "measured fp32 1024^3 matmul"
    print(f"device {device} threads {args.threads} precision {args.precision} compile {args.compile}")
    print(f"shape d_model {args.d_model} layers {args.layers} heads {args.heads}/{args.kv_heads} ffn {cfg.ffn_dim} "
          f"vocab {args.vocab} seq {args.seq} micro-batch {args.micro_batch}; params ours {n_ours:,} peer {n_peer:,}")
    print(f"ours  tokens/s {o:,.0f} (rounds {[round(v) for v in ours_tps]}) MFU {100 * o * fpt / peak:.1f}%")
    print(f"peer  tokens/s {p:,.0f} (rounds {[round(v) for v in peer_tps]}) MFU {100 * p * fpt / peak:.1f}%")
    print(f"ratio ours/peer {o / p:.2f}x; peak {peak / 1e9:,.0f} GFLOP/s ({peak_src})")

    if not args.skip_loader:
        loader_share(args, ours, opt_ours, device, amp)
    checkpoint_stall(ours, opt_ours)
    return 0


def loader_share(args, model, opt, device, amp):
    """Share of a training step spent producing the batch (real shards, document masks on)."""
    from pretrainlab.config import MixConfig, PackingConfig
    from pretrainlab.errors import UserError
    from pretrainlab.tokenizer.vocab import load_tokenizer
    from pretrainlab.train.loader import MixtureLoader

    tokens = Path(args.workdir) / "tokens"
    try:
        tok = load_tokenizer(Path(args.workdir) / "tokenizer")
        ld = MixtureLoader(tokens, args.seq, args.micro_batch, 0, MixConfig(), PackingConfig(),
                           eos_id=tok.eos_id, pad_id=tok.pad_id)
    except UserError as err:
        print(f"loader share: skipped ({err}); run `make quickstart` first or pass --workdir")
        return
    if tok.vocab_size > model.cfg.vocab_size:
        print("loader share: skipped (tokenizer vocabulary larger than --vocab)")
        return
    t_load = t_step = 0.0
    for i in range(args.steps + 2):
        t0 = time.perf_counter()
        batch = ld.next_batch().to(device)
        t1 = time.perf_counter()
        with amp():
            loss = model(batch.inputs, batch.targets, doc_ids=batch.doc_ids)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        t2 = time.perf_counter()
        if i >= 2:
            t_load += t1 - t0
            t_step += t2 - t0
    print(f"loader share of step time {100 * t_load / t_step:.2f}% ({1e3 * t_load / args.steps:.2f} ms of "
          f"{1e3 * t_step / args.steps:.1f} ms per micro-batch, document masks on)")


def checkpoint_stall(model, opt, saves: int = 4):
    """How long the training loop is blocked by a synchronous vs an asynchronous checkpoint save.

    Async: the time in ``save()`` plus the wait before the next optimizer step, with one real
    forward/backward in between (what the loop does while the copy runs). Medians over saves 2..N.
    """
    from pretrainlab.train.checkpoint import AsyncCheckpointer, save_checkpoint
    from pretrainlab.train.parallel import full_state

    x = torch.randint(3, model.cfg.vocab_size, (8, min(256, model.cfg.max_seq_len)))
    sync_t, async_t, fb_t = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        saver = AsyncCheckpointer()
        for i in range(saves):
            msd, osd = full_state(model, opt)
            t = time.perf_counter()
            save_checkpoint(Path(tmp) / "sync", i, msd, osd, {}, {"step": i})
            sync_t.append(time.perf_counter() - t)
            saver.wait()  # the previous async write must not overlap this measurement
            t = time.perf_counter()
            saver.save(Path(tmp) / "async", i, msd, osd, {}, {"step": i})
            blocked = time.perf_counter() - t
            t = time.perf_counter()
            model(x, x)[1].backward()  # the next step's forward/backward runs while the copy proceeds
            fb_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            saver.wait_staged()  # before the optimizer step
            async_t.append(blocked + time.perf_counter() - t)
            opt.zero_grad(set_to_none=True)
        saver.wait()
    s, a = statistics.median(sync_t[1:]), statistics.median(async_t[1:])
    print(f"checkpoint: synchronous save blocks {1e3 * s:.1f} ms; async save blocks {1e3 * a:.1f} ms "
          f"({100 * a / s:.1f}% of synchronous; medians of saves 2-{saves}; forward/backward in between "
          f"{1e3 * statistics.median(fb_t[1:]):.0f} ms)")


if __name__ == "__main__":
    sys.exit(main())
