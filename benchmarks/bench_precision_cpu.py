"""Benchmark: CPU training-step time of the accident suite's model in fp16 and bf16 autocast, vs fp32.

Usage:
  .venv/bin/python benchmarks/bench_precision_cpu.py [--threads 1] [--steps 10] [--rounds 3]
      [--d-model 64 --layers 2 --vocab 4224 --seq 64 --micro-batch 16]

The accident suite trains an fp16 run (without loss scaling) and its bf16
control on CPU. CPU autocast may emulate half-precision matmuls, so this
measures what those runs cost relative to the fp32 peer (same model, batch,
threads, AdamW), alternating precisions for several rounds and reporting the
median, because the machine is shared. The fp16 path uses GradScaler, like the
trainer does when train.loss_scaling is on.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pretrainlab.config import ModelConfig
from pretrainlab.model.transformer import Transformer


def step_time(model, opt, x, y, precision: str, steps: int) -> float:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cpu", enabled=precision == "fp16")

    def one():
        ctx = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
        with ctx:
            _, loss = model(x, y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    one()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=4224)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=16)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=a.vocab, d_model=a.d_model, n_layers=a.layers, n_heads=4, n_kv_heads=2,
                      max_seq_len=a.seq)
    x = torch.randint(0, a.vocab, (a.micro_batch, a.seq))
    y = torch.randint(0, a.vocab, (a.micro_batch, a.seq))
    times: dict[str, list[float]] = {"fp32": [], "bf16": [], "fp16": []}
    for _ in range(a.rounds):
        for precision in times:
            model = Transformer(cfg)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            times[precision].append(step_time(model, opt, x, y, precision, a.steps))
    tokens = a.micro_batch * a.seq
    base = statistics.median(times["fp32"])
    print(f"model d_model={a.d_model} layers={a.layers} vocab={a.vocab}; batch {a.micro_batch}x{a.seq}; "
          f"threads {a.threads}; median of {a.rounds} rounds x {a.steps} steps")
    for precision, ts in times.items():
        med = statistics.median(ts)
        print(f"{precision:>5}: {1000 * med:7.1f} ms/step  {tokens / med:9,.0f} tokens/s  {med / base:5.2f}x fp32's time")


if __name__ == "__main__":
    main()
