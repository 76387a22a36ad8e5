"""Benchmark: training tokens/s and MFU of our model vs transformers' LlamaForCausalLM, same dims and recipe.

Usage:
  .venv/bin/python benchmarks/train_throughput.py [--workdir work] [--threads 2] [--steps 6] [--rounds 3]
      [--d-model 256 --layers 4 --heads 4 --kv-heads 2 --seq 256 --micro-batch 8] [--device cpu|cuda]
      [--precision fp32|bf16] [--compile] [--masks causal,doc] [--skip-loader] [--skip-checkpoint]

Both models get the same shapes, batch, dtype, thread count, optimizer (torch's
fused AdamW, the one ``train/optim.py`` builds) and SDPA attention. Two attention
settings: ``causal`` (plain causal rows) and ``doc`` (packed rows with document
masks, the trainer's default: ours gets ``doc_ids``, the peer the same
block-diagonal boolean mask as a 4-D ``attention_mask`` plus per-document
``position_ids``). Rounds of --steps steps alternate ours/peer; the machine is
shared and noisy, so the headline is the median over rounds of the ratio of
each adjacent ours/peer pair (the ratio of the two medians is printed too).
Also measured: the share of step time spent in our data loader (real token
shards from --workdir, made by the quickstart), and the stall of an async
checkpoint save relative to a synchronous one.
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


def time_steps(model_fn, opt, batch, steps, device, amp, warmup=2):
    """(tokens per wall-clock second, tokens per CPU-second of this process) over ``steps`` steps after warm-up."""
    x, y = batch
    for _ in range(warmup):  # warm-up (and compile)
        with amp():
            loss = model_fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(steps):
        with amp():
            loss = model_fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return steps * x.numel() / (time.perf_counter() - t), steps * x.numel() / (time.process_time() - c)


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
    ap.add_argument("--masks", default="causal,doc", help="comma-separated: causal, doc")
    ap.add_argument("--skip-loader", action="store_true")
    ap.add_argument("--skip-checkpoint", action="store_true")
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
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    opt_peer = torch.optim.AdamW(peer.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    x = torch.randint(3, args.vocab, (args.micro_batch, args.seq), device=device)
    y = torch.randint(0, args.vocab, (args.micro_batch, args.seq), device=device)
    doc_ids, doc_src = document_ids(args, device)

    def amp():
        if args.precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return torch.autocast(device_type=device.type, enabled=False)

    from pretrainlab.model.attention import dense_doc_mask
    from pretrainlab.model.transformer import positions_in_document

    peer_mask, peer_pos = dense_doc_mask(doc_ids), positions_in_document(doc_ids)
    runs = {
        # HF shifts labels internally: the peer scores seq-1 tokens per row, we score seq (slightly more work).
        "causal": (lambda a, b: ours(a, b)[1], lambda a, b: peer(input_ids=a, labels=b).loss),
        "doc": (lambda a, b: ours(a, b, doc_ids=doc_ids)[1],
                lambda a, b: peer(input_ids=a, labels=b, attention_mask=peer_mask, position_ids=peer_pos).loss),
    }
    masks = [m.strip() for m in args.masks.split(",") if m.strip()]
    unknown = [m for m in masks if m not in runs]
    if unknown or not masks:
        ap.error(f"--masks takes causal and/or doc, got {args.masks!r}")

    fpt = flops_per_token(cfg, args.seq)
    if device.type == "cuda":
        peak = gpu_peak_flops(torch.cuda.get_device_name(device), args.precision) or float("nan")
        peak_src = "datasheet dense peak"
    else:
        peak = measure_cpu_matmul_flops()
        peak_src = "measured fp32 1024^3 matmul"
    print(f"device {device} threads {args.threads} precision {args.precision} compile {args.compile} "
          f"optimizer AdamW(fused=True) for both")
    print(f"shape d_model {args.d_model} layers {args.layers} heads {args.heads}/{args.kv_heads} ffn {cfg.ffn_dim} "
          f"vocab {args.vocab} seq {args.seq} micro-batch {args.micro_batch}; params ours {n_ours:,} peer {n_peer:,}")
    print(f"doc masks from {doc_src}: {int((doc_ids[:, 1:] != doc_ids[:, :-1]).sum()) + len(doc_ids)} documents "
          f"in {args.micro_batch} rows; MFU against {peak / 1e9:,.0f} GFLOP/s ({peak_src})")
    for mask in masks:
        f_ours, f_peer = runs[mask]
        if args.compile:
            f_ours, f_peer = torch.compile(f_ours), torch.compile(f_peer)
        ours_tps, peer_tps, ours_cpu, peer_cpu = [], [], [], []
        for r in range(args.rounds):
            warmup = 2 if r == 0 else 0  # the first round warms up (and compiles) each model
            wall, cpu = time_steps(f_ours, opt_ours, (x, y), args.steps, device, amp, warmup)
            ours_tps.append(wall)
            ours_cpu.append(cpu)
            wall, cpu = time_steps(f_peer, opt_peer, (x, y), args.steps, device, amp, warmup)
            peer_tps.append(wall)
            peer_cpu.append(cpu)
        o, p = statistics.median(ours_tps), statistics.median(peer_tps)
        pair = statistics.median(a / b for a, b in zip(ours_tps, peer_tps))
        print(f"[{mask}] ours tokens/s {o:,.0f} (rounds {[round(v) for v in ours_tps]}) MFU {100 * o * fpt / peak:.1f}%")
        print(f"[{mask}] peer tokens/s {p:,.0f} (rounds {[round(v) for v in peer_tps]}) MFU {100 * p * fpt / peak:.1f}%")
        print(f"[{mask}] ratio ours/peer {pair:.2f}x (median of per-round pairs "
              f"{[round(a / b, 2) for a, b in zip(ours_tps, peer_tps)]}; ratio of medians {o / p:.2f}x)")
        if device.type == "cpu" and args.threads == 1:
            # CPU time is what other processes on a loaded machine do not steal; with more threads it
            # would count OpenMP threads spinning at barriers while a sibling waits for a core.
            print(f"[{mask}] tokens per CPU-second ours {statistics.median(ours_cpu):,.0f} peer "
                  f"{statistics.median(peer_cpu):,.0f}: ratio {statistics.median(a / b for a, b in zip(ours_cpu, peer_cpu)):.2f}x "
                  f"(median of per-round pairs)")

    if not args.skip_loader:
        loader_share(args, ours, opt_ours, device, amp)
    if not args.skip_checkpoint:
        checkpoint_stall(ours, opt_ours)
    return 0


def document_ids(args, device):
    """(doc_ids, where from): document ids of the first packed batch of --workdir's shards, else synthetic.

    Synthetic rows cut documents at random with a mean length of 200 tokens (fixed seed).
    """
    from pretrainlab.config import MixConfig, PackingConfig
    from pretrainlab.errors import UserError
    from pretrainlab.tokenizer.vocab import load_tokenizer
    from pretrainlab.train.loader import MixtureLoader

    try:
        tok = load_tokenizer(Path(args.workdir) / "tokenizer")
        ld = MixtureLoader(Path(args.workdir) / "tokens", args.seq, args.micro_batch, 0, MixConfig(), PackingConfig(),
                           eos_id=tok.eos_id, pad_id=tok.pad_id)
        batch = ld.next_batch()
        if batch.doc_ids is not None:
            return batch.doc_ids.to(device), f"{args.workdir} shards"
    except UserError:
        pass
    gen = torch.Generator().manual_seed(0)
    starts = torch.rand(args.micro_batch, args.seq, generator=gen) < 1 / 200
    return torch.cumsum(starts, dim=1).to(device), "synthetic cuts (mean 200 tokens)"


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
