"""The GPU path in one command: CUDA correctness tests, throughput against the peers, FP8 vs bf16.

    make gpu-check GPU_OUT=DIR        # on the lent GPU machine (installs wheelhouse/ first)
    python benchmarks/gpu_suite.py --out DIR [--dry] [--budget-s 480] [--only tests,dense,moe,attention,fp8]

Writes DIR/gpu_suite.json (every figure, the machine, each step's status and reason)
and DIR/gpu_suite.md (the table for docs/BENCHMARKS.md), rewritten after every step
so a run stopped at its time limit keeps what it measured. Steps, in order:

0. environment: torch, CUDA, the GPU, and whether every installed requirement of
   pretrainlab[fp8] is met (the wheelhouse goes in with --no-deps over the image);
1. tests: ``pytest -m cuda tests/test_cuda.py tests/test_fp8.py`` (FlexAttention vs SDPA,
   grouped GEMM vs loop, bf16 vs fp32, FSDP2, async DCP resume, NCCL EP, FP8);
2. throughput against peers measured in the same run, bf16 autocast, fp32 master
   weights, fused AdamW, sequence 2,048: ``dense`` (TinyLlama-1.1B shape, ours with
   compiled blocks vs transformers ``LlamaForCausalLM`` + ``torch.compile``),
   ``moe`` (OLMoE shape, 64 experts top-8: ours vs transformers ``OlmoeForCausalLM``),
   ``attention`` (document-masked FlexAttention vs causal SDPA, 8,192-token rows);
   tokens/s, MFU against the datasheet dense bf16 peak, peak memory;
3. ``fp8``: a small model trained N steps in bf16 and with ``train.fp8`` (torchao,
   rowwise, output projection kept in bf16) on the same learnable synthetic stream:
   final loss within 2% and the speed-up.

``--dry`` runs everything runnable on the CPU at tiny shapes without compile (the
numbers mean nothing there) and records what cannot run, with the reason.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import platform
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

STEPS = ("tests", "dense", "moe", "attention", "fp8")
# Rough seconds each step needs on an H100/H200 (compile included); a step is skipped when less is left.
NEEDS_S = {"tests": 60, "dense": 150, "moe": 60, "attention": 20, "fp8": 90}
TARGETS = {  # from the peers measured on an H100 (docs/BENCHMARKS.md, ../shared/DESIGN.md)
    "dense": {"ratio_vs_peer": 1.25, "mfu": 0.51},
    "moe": {"ratio_vs_peer": 4.0, "mfu": 0.25},
    "attention": {"doc_vs_causal_time": 1.0},
    "fp8": {"loss_rel_diff": 0.02},
}


# --------------------------------------------------------------------------- the record


class Record:
    """The suite's results, written to JSON and markdown after every step."""

    def __init__(self, out: Path, dry: bool):
        self.out, self.dry = out, dry
        self.data = {"suite": "gpu_suite", "dry": dry, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                     "machine": {}, "steps": {}}

    def step(self, name: str, status: str, reason: str = "", **fields) -> dict:
        entry = {"status": status, **({"reason": reason} if reason else {}), **fields}
        self.data["steps"][name] = entry
        self.write()
        return entry

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "gpu_suite.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.out / "gpu_suite.json")
        (self.out / "gpu_suite.md").write_text(markdown(self.data))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = [f"# GPU suite{' (--dry: CPU, tiny shapes, numbers meaningless)' if data['dry'] else ''}", "",
             f"Machine: {m.get('gpu', 'no GPU')}; torch {m.get('torch')}, CUDA {m.get('cuda')}, Python {m.get('python')}; "
             f"started {data['started']}.", "",
             "| step | status | figures | target | met |", "| --- | --- | --- | --- | --- |"]
    for name, s in data["steps"].items():
        figures = "; ".join(f"{k} {_fmt(v)}" for k, v in s.get("figures", {}).items())
        if s.get("reason"):
            figures = (figures + "; " if figures else "") + s["reason"]
        target = ", ".join(f"{k} {v}" for k, v in s.get("target", {}).items())
        met = {True: "yes", False: "NO", None: ""}[s.get("met")]
        lines.append(f"| {name} | {s['status']} | {figures} | {target} | {met} |")
    tests = data["steps"].get("tests", {}).get("cases", [])
    if tests:
        lines += ["", "| test | outcome | reason |", "| --- | --- | --- |"]
        lines += [f"| {c['name']} | {c['outcome']} | {c.get('reason', '')[:160]} |" for c in tests]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- step 0: environment


def machine_info() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    if info["gpus"]:
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1))
    return info


def unmet_requirements(root: str = "pretrainlab", extras: tuple[str, ...] = ("fp8",)) -> list[str]:
    """Requirements in the installed dependency closure of ``root[extras]`` that the installed versions miss."""
    from importlib import metadata

    from packaging.requirements import Requirement

    problems, seen, todo = [], set(), [(root, extras)]
    while todo:
        name, extra = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in reqs:
            req = Requirement(text)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (*extra, "")):
                continue
            try:
                have = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                problems.append(f"{req} (not installed)")
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                problems.append(f"{req} (installed {have})")
            todo.append((req.name, tuple(req.extras)))
    return sorted(set(problems))


# --------------------------------------------------------------------------- step 1: the CUDA tests


def run_tests(rec: Record, args) -> dict:
    xml = rec.out / "cuda_tests.xml"
    files = ["tests/test_cuda.py"] + ([] if args.dry else ["tests/test_fp8.py"])  # test_fp8 runs in the CPU suite
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "cuda or not slow",
           *files, f"--junitxml={xml}"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.tests_timeout_s)
    (rec.out / "cuda_tests.log").write_text(done.stdout + done.stderr)
    cases = junit_cases(xml) if xml.is_file() else []
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "skipped")}
    status = "failed" if done.returncode not in (0, 5) or counts["failed"] else "passed"
    return rec.step("tests", status, "" if cases else f"pytest exited {done.returncode}: {done.stdout[-300:]}",
                    figures={**counts, "seconds": time.perf_counter() - t0}, cases=cases,
                    met=None if not cases else counts["failed"] == 0)


def junit_cases(path: Path) -> list[dict]:
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        entry = {"name": f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}", "outcome": "passed"}
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                entry["outcome"] = "skipped" if tag == "skipped" else "failed"
                entry["reason"] = (node.get("message") or node.text or "").strip().splitlines()[0][:300]
        cases.append(entry)
    return cases


# --------------------------------------------------------------------------- step 2: throughput


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def time_training(loss_fn, params, batch, device, steps: int, warmup: int) -> dict:
    """tokens/s over ``steps`` bf16-autocast steps (fused AdamW) after ``warmup`` ones (compile happens there).

    The steps are train_throughput.py's ``time_steps``, the loop that measured the peers in docs/BENCHMARKS.md.
    """
    from train_throughput import time_steps

    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), fused=True)

    def amp():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    t0 = time.perf_counter()
    time_steps(loss_fn, opt, batch, warmup, device, amp, warmup=0)
    t_warm = time.perf_counter() - t0
    tokens_per_s, _ = time_steps(loss_fn, opt, batch, steps, device, amp, warmup=0)
    del opt
    return {"tokens_per_s": tokens_per_s, "step_ms": 1e3 * batch[0].numel() / tokens_per_s, "warmup_s": t_warm}


@functools.lru_cache(maxsize=None)
def peak_flops(device: torch.device) -> tuple[float, str]:
    from pretrainlab.monitor.flops import gpu_peak_flops, measure_cpu_matmul_flops

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name, "bf16")
        return (peak, f"{name} datasheet dense bf16") if peak else (float("nan"), f"{name}: peak unknown")
    return measure_cpu_matmul_flops(), "measured CPU fp32 matmul (--dry)"


def compare(rec: Record, name: str, ours: dict, peer: dict, fpt: float, peak: tuple[float, str], extra: dict) -> dict:
    for r in (ours, peer):
        r["mfu"] = r["tokens_per_s"] * fpt / peak[0]
    ratio = ours["tokens_per_s"] / peer["tokens_per_s"]
    target = TARGETS[name]
    met = None if rec.dry else bool(ratio >= target["ratio_vs_peer"] and ours["mfu"] >= target["mfu"])
    figures = {"ours_tokens_per_s": ours["tokens_per_s"], "peer_tokens_per_s": peer["tokens_per_s"],
               "ratio_vs_peer": ratio, "ours_mfu": ours["mfu"], "peer_mfu": peer["mfu"],
               "ours_peak_gib": ours.get("peak_gib"), "peer_peak_gib": peer.get("peak_gib"),
               "ours_first_steps_s": ours["warmup_s"], "peer_first_steps_s": peer["warmup_s"]}
    return rec.step(name, "measured", figures={k: v for k, v in figures.items() if v is not None}, target=target,
                    met=met, ours=ours, peer=peer, flops_per_token=fpt, peak_flops=peak[0], peak_source=peak[1], **extra)


def dense_shapes(dry: bool) -> dict:
    if dry:
        return dict(vocab=512, d=64, layers=2, heads=4, kv=2, ffn=192, seq=128, batch=2, steps=2, warmup=1)
    return dict(vocab=32000, d=2048, layers=22, heads=32, kv=4, ffn=5632, seq=2048, batch=8, steps=10, warmup=3)


def bench_dense(rec: Record, device: torch.device, dry: bool) -> dict:
    """Ours (per-block torch.compile, as train.compile does) vs transformers Llama + torch.compile, causal rows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pretrainlab.config import ModelConfig
    from pretrainlab.model.transformer import Transformer, flops_per_token

    s = dense_shapes(dry)
    cfg = ModelConfig(vocab_size=s["vocab"], d_model=s["d"], n_layers=s["layers"], n_heads=s["heads"],
                      n_kv_heads=s["kv"], ffn_hidden=s["ffn"], max_seq_len=s["seq"], tie_embeddings=False)
    compile_ = not dry
    x = torch.randint(0, s["vocab"], (s["batch"], s["seq"]), device=device)
    batch = (x, torch.roll(x, -1, dims=1))
    torch.manual_seed(0)
    model = Transformer(cfg).to(device)
    if compile_:
        for i, block in enumerate(model.layers):
            model.layers[i] = torch.compile(block)
    free_memory(device)
    ours = time_training(lambda a, b: model(a, b)[1], model.parameters(), batch, device, s["steps"], s["warmup"])
    ours["peak_gib"] = peak_gib(device)
    del model
    free_memory(device)
    hf_cfg = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["d"], intermediate_size=s["ffn"],
                         num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv"],
                         max_position_embeddings=s["seq"], rms_norm_eps=1e-5, tie_word_embeddings=False,
                         attn_implementation="sdpa")
    peer = LlamaForCausalLM(hf_cfg).to(device)
    fn = (lambda a, b: peer(input_ids=a, labels=b).loss)
    fn = torch.compile(fn) if compile_ else fn
    peer_r = time_training(fn, peer.parameters(), batch, device, s["steps"], s["warmup"])
    peer_r["peak_gib"] = peak_gib(device)
    del peer, fn
    free_memory(device)
    return compare(rec, "dense", ours, peer_r, flops_per_token(cfg, s["seq"]), peak_flops(device),
                   {"shape": s, "compile": compile_ or "off in --dry (CPU inductor builds take minutes)"})


def moe_shapes(dry: bool) -> dict:
    if dry:
        return dict(vocab=512, d=64, layers=2, heads=4, experts=8, top_k=2, hidden=32, seq=128, batch=2, steps=2,
                    warmup=1)
    return dict(vocab=50304, d=2048, layers=4, heads=16, experts=64, top_k=8, hidden=1024, seq=2048, batch=8,
                steps=8, warmup=3)


def bench_moe(rec: Record, device: torch.device, dry: bool) -> dict:
    """Ours (dropless, grouped GEMMs on CUDA) vs transformers' OLMoE, both eager, same shape; MFU on active params."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    from pretrainlab.config import ModelConfig, MoEConfig
    from pretrainlab.model.transformer import Transformer, flops_per_token

    s = moe_shapes(dry)
    cfg = ModelConfig(vocab_size=s["vocab"], d_model=s["d"], n_layers=s["layers"], n_heads=s["heads"],
                      max_seq_len=s["seq"], tie_embeddings=False,
                      moe=MoEConfig(num_experts=s["experts"], top_k=s["top_k"], expert_hidden=s["hidden"],
                                    dropless=True, normalize_top_k=False))
    x = torch.randint(0, s["vocab"], (s["batch"], s["seq"]), device=device)
    batch = (x, torch.roll(x, -1, dims=1))
    torch.manual_seed(0)
    model = Transformer(cfg).to(device)
    free_memory(device)
    ours = time_training(lambda a, b: model(a, b)[1], model.parameters(), batch, device, s["steps"], s["warmup"])
    ours["peak_gib"] = peak_gib(device)
    del model
    free_memory(device)
    hf_cfg = OlmoeConfig(vocab_size=s["vocab"], hidden_size=s["d"], intermediate_size=s["hidden"],
                         num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["heads"],
                         num_experts=s["experts"], num_experts_per_tok=s["top_k"], max_position_embeddings=s["seq"],
                         norm_topk_prob=False, tie_word_embeddings=False, attn_implementation="sdpa")
    peer = OlmoeForCausalLM(hf_cfg).to(device)
    peer_r = time_training(lambda a, b: peer(input_ids=a, labels=b).loss, peer.parameters(), batch, device,
                           s["steps"], s["warmup"])
    peer_r["peak_gib"] = peak_gib(device)
    del peer
    free_memory(device)
    from pretrainlab.model.moe import resolve_dispatch

    return compare(rec, "moe", ours, peer_r, flops_per_token(cfg, s["seq"]), peak_flops(device),
                   {"shape": s, "mfu_counts": "active parameters (router + top-k experts)",
                    "dispatch": resolve_dispatch("auto", device, torch.bfloat16 if device.type == "cuda" else torch.float32)})


def bench_attention(rec: Record, device: torch.device, dry: bool) -> dict:
    """Forward+backward of document-masked attention (FlexAttention BlockMask on CUDA) vs causal SDPA."""
    from pretrainlab.model.attention import attend, build_doc_mask

    b, h, t, d, doc_len, iters = (1, 4, 256, 32, 40, 2) if dry else (2, 32, 8192, 64, 700, 10)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, t, d, generator=gen).to(device, dtype).requires_grad_() for _ in range(3))
    doc_ids = torch.cumsum(torch.rand(b, t, generator=gen) < 1 / doc_len, dim=1).to(device)
    mask = build_doc_mask(doc_ids)

    def once(m):
        out = attend(q, k, v, m)
        out.backward(torch.ones_like(out))

    results = {}
    for name, m in (("causal", None), ("doc", mask)):
        free_memory(device)
        for _ in range(2):
            once(m)  # warm-up (FlexAttention compiles here)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            once(m)
        sync(device)
        seconds = (time.perf_counter() - t0) / iters
        results[name] = {"ms": 1e3 * seconds, "tokens_per_s": b * t / seconds, "peak_gib": peak_gib(device)}
    flops = 7 * b * h * t * t * d  # causal attention fwd (2bht²d) + bwd (2.5×): the doc mask counted the same
    peak = peak_flops(device)
    for r in results.values():
        r["mfu_causal_equivalent"] = flops / (r["ms"] / 1e3) / peak[0]
    ratio = results["doc"]["ms"] / results["causal"]["ms"]
    kernel = type(mask).__name__
    figures = {"causal_ms": results["causal"]["ms"], "doc_ms": results["doc"]["ms"], "doc_vs_causal_time": ratio,
               "causal_tokens_per_s": results["causal"]["tokens_per_s"], "doc_tokens_per_s": results["doc"]["tokens_per_s"],
               "causal_mfu": results["causal"]["mfu_causal_equivalent"], "doc_mfu": results["doc"]["mfu_causal_equivalent"]}
    if device.type == "cuda":
        figures.update(causal_peak_gib=results["causal"]["peak_gib"], doc_peak_gib=results["doc"]["peak_gib"])
    return rec.step("attention", "measured", figures=figures, target=TARGETS["attention"],
                    met=None if dry else bool(ratio <= TARGETS["attention"]["doc_vs_causal_time"]),
                    shape={"batch": b, "heads": h, "seq": t, "head_dim": d, "mean_doc_len": doc_len},
                    doc_mask_kernel=f"{kernel} ({'FlexAttention' if kernel == 'BlockMask' else 'SDPA with a bool mask'})",
                    mfu_note="FLOPs of causal attention (7·b·h·t²·d) for both; the document mask does less work")


# --------------------------------------------------------------------------- step 3: FP8


def synthetic_stream(vocab: int, batch: int, seq: int, steps: int, seed: int = 0) -> list[tuple]:
    """A learnable stream: each token's successor is a fixed permutation of it 3/4 of the time, else random."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(vocab, generator=gen)
    rows = batch * steps
    x = torch.empty(rows, seq + 1, dtype=torch.long)
    x[:, 0] = torch.randint(0, vocab, (rows,), generator=gen)
    follow = torch.rand(rows, seq, generator=gen) < 0.75
    noise = torch.randint(0, vocab, (rows, seq), generator=gen)
    for i in range(seq):
        x[:, i + 1] = torch.where(follow[:, i], perm[x[:, i]], noise[:, i])
    return [(x[j:j + batch, :-1], x[j:j + batch, 1:]) for j in range(0, rows, batch)]


def train_small(device, fp8: bool, s: dict, compile_: bool = True) -> dict:
    """``s['steps']`` steps of the small model with the trainer's block wrappers (FP8 swap, compiled blocks)."""
    from pretrainlab.config import load_config
    from pretrainlab.model.transformer import Transformer
    from pretrainlab.train.optim import build_optimizer, lr_at, set_lr
    from pretrainlab.train.parallel import apply_block_wrappers, autocast_context

    cfg = load_config(None, [f"model.vocab_size={s['vocab']}", f"model.d_model={s['d']}", f"model.n_layers={s['layers']}",
                             f"model.n_heads={s['heads']}", f"model.max_seq_len={s['seq']}", "model.tie_embeddings=false",
                             f"train.seq_len={s['seq']}", "train.micro_batch=1", f"train.global_batch_tokens={s['seq']}",
                             "train.precision=bf16", f"train.fp8={str(fp8).lower()}",
                             f"train.compile={str(compile_).lower()}", f"train.steps={s['steps']}", "optim.lr=6e-4",
                             "optim.warmup_steps=5"])
    torch.manual_seed(0)
    model = Transformer(cfg.model).to(device)
    apply_block_wrappers(model, cfg.train, device)  # what training applies on one GPU: FP8 swap, compile
    opt = build_optimizer(model, cfg.optim, device.type)
    amp = autocast_context(cfg, device, 1)
    losses, times = [], []
    for step, (x, y) in enumerate(synthetic_stream(s["vocab"], s["batch"], s["seq"], s["steps"])):
        x, y = x.to(device), y.to(device)
        set_lr(opt, lr_at(step, s["steps"], cfg.optim))
        sync(device)
        t0 = time.perf_counter()
        with amp:
            loss = model(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        sync(device)
        times.append(time.perf_counter() - t0)
    timed = sorted(times[s["warmup"]:])
    seconds = timed[len(timed) // 2]  # median step after compile
    del model, opt
    free_memory(device)
    values = [float(v) for v in losses]
    return {"final_loss": sum(values[-5:]) / 5, "first_loss": values[0], "tokens_per_s": s["batch"] * s["seq"] / seconds,
            "losses": values}


def bench_fp8(rec: Record, device: torch.device, dry: bool) -> dict:
    from pretrainlab.train.fp8 import fp8_unsupported_reason

    reason = fp8_unsupported_reason(device)
    if reason is None:
        try:
            import torchao.float8  # noqa: F401
        except ImportError as err:
            reason = f"torchao is not installed ({err}); build the wheelhouse with the fp8 extra"
    if reason:
        figures = {}
        if dry:  # the bf16 half still runs, so the dry mode checks this step's code
            tiny = dict(vocab=256, d=64, layers=2, heads=4, seq=64, batch=2, steps=8, warmup=2)
            ref = train_small(device, False, tiny, compile_=False)
            figures = {"bf16_first_loss": ref["first_loss"], "bf16_final_loss": ref["final_loss"]}
        return rec.step("fp8", "skipped", reason, figures=figures, target=TARGETS["fp8"])
    s = dict(vocab=8192, d=2048, layers=4, heads=16, seq=2048, batch=4, steps=60, warmup=5)
    bf16 = train_small(device, False, s)
    fp8 = train_small(device, True, s)
    rel = abs(fp8["final_loss"] - bf16["final_loss"]) / bf16["final_loss"]
    speedup = fp8["tokens_per_s"] / bf16["tokens_per_s"]
    return rec.step("fp8", "measured", figures={"bf16_final_loss": bf16["final_loss"], "fp8_final_loss": fp8["final_loss"],
                                                "loss_rel_diff": rel, "speedup": speedup,
                                                "bf16_tokens_per_s": bf16["tokens_per_s"],
                                                "fp8_tokens_per_s": fp8["tokens_per_s"]},
                    target=TARGETS["fp8"], met=bool(rel <= TARGETS["fp8"]["loss_rel_diff"]), shape=s,
                    recipe="torchao float8 rowwise, lm_head and router kept in bf16, compiled blocks",
                    bf16=bf16, fp8=fp8)


# --------------------------------------------------------------------------- driver


BENCHES = {"dense": bench_dense, "moe": bench_moe, "attention": bench_attention, "fp8": bench_fp8}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu_suite.json, gpu_suite.md and the test log")
    ap.add_argument("--dry", action="store_true", help="CPU, tiny shapes, no compile: checks the suite itself")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip steps that would not finish within this many seconds (default 480; none with --dry)")
    ap.add_argument("--only", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    ap.add_argument("--tests-timeout-s", type=float, default=240)
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := [s for s in only if s not in STEPS]:
        ap.error(f"--only takes {', '.join(STEPS)}; got {', '.join(unknown)}")
    budget = args.budget_s if args.budget_s is not None else math.inf if args.dry else 480.0
    t_start = time.perf_counter()
    rec = Record(Path(args.out), args.dry)
    rec.data["machine"] = machine_info()
    if not args.dry and not torch.cuda.is_available():
        print("error: no CUDA GPU here; run with --dry on the CPU (or on the lent GPU machine)", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(min(4, torch.get_num_threads()))
    unmet = unmet_requirements(extras=() if args.dry else ("fp8",))  # the CPU suite installs no FP8 extra (torchao)
    rec.step("environment", "failed" if unmet else "passed", "; ".join(unmet), figures={"unmet_requirements": len(unmet)})
    for name in only:
        left = budget - (time.perf_counter() - t_start)
        if left < NEEDS_S[name]:
            rec.step(name, "skipped", f"time budget: {max(left, 0):.0f} s left of --budget-s {budget:.0f}, needs ~{NEEDS_S[name]} s")
            continue
        print(f"[gpu_suite] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            entry = run_tests(rec, args) if name == "tests" else BENCHES[name](rec, device, args.dry)
        except Exception as err:  # one step's failure must not lose the others' figures
            entry = rec.step(name, "error", f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}",
                             traceback=traceback.format_exc()[-3000:])
        entry["seconds"] = time.perf_counter() - t0
        rec.write()
        print(f"[gpu_suite] {name}: {entry['status']} {entry.get('reason', '')} {json.dumps(entry.get('figures', {}), default=str)}",
              flush=True)
    rec.data["seconds"] = time.perf_counter() - t_start
    rec.write()
    print((rec.out / "gpu_suite.md").read_text())
    bad = [n for n, s in rec.data["steps"].items() if s["status"] in ("failed", "error")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
