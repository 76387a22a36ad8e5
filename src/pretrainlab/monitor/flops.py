"""Peak FLOP/s for MFU: datasheet tables for known GPUs, a measured matmul rate elsewhere.

MFU = achieved model FLOP/s / peak FLOP/s, with model FLOPs per token from
``model.transformer.flops_per_token``. On the CPU there is no meaningful
datasheet number, so the "peak" is the measured fp32 matmul rate at the current
torch thread count (and the report says so). On GPUs the dense (non-sparse)
datasheet peak for the training precision is used.
"""

from __future__ import annotations

import math
import time

import torch

# Dense (no 2:4 sparsity) datasheet peaks, FLOP/s. fp16 equals bf16 on these parts.
_GPU_PEAKS: dict[str, dict[str, float]] = {
    "H200": {"fp8": 1979e12, "bf16": 989.5e12, "tf32": 494.7e12, "fp32": 67e12},
    "H100 SXM": {"fp8": 1979e12, "bf16": 989.5e12, "tf32": 494.7e12, "fp32": 67e12},
    "H100 NVL": {"fp8": 1670.5e12, "bf16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12},
    "H100 PCIe": {"fp8": 1513e12, "bf16": 756e12, "tf32": 378e12, "fp32": 51e12},
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
}

_PRECISION_ALIASES = {
    "bf16": "bf16", "bfloat16": "bf16", "fp16": "bf16", "float16": "bf16", "half": "bf16",
    "fp32": "fp32", "float32": "fp32", "float": "fp32",
    "tf32": "tf32",
    "fp8": "fp8", "float8": "fp8", "e4m3": "fp8",
}


def gpu_model(device_name: str) -> str | None:
    """Map a CUDA device name (e.g. 'NVIDIA H100 80GB HBM3') to a key of the peak table."""
    name = device_name.upper()
    if "H200" in name or "GH200" in name:
        return "H200"
    if "H100" in name or "H800" in name:
        if "PCIE" in name:
            return "H100 PCIe"
        if "NVL" in name:
            return "H100 NVL"
        return "H100 SXM"
    if "A100" in name or "A800" in name:
        return "A100"
    return None


def gpu_peak_flops(device_name: str, precision: str) -> float | None:
    """Dense datasheet peak FLOP/s for a GPU name and precision; None if unknown."""
    model = gpu_model(device_name)
    prec = _PRECISION_ALIASES.get(precision.lower().strip())
    if model is None or prec is None:
        return None
    return _GPU_PEAKS[model].get(prec)


def measure_matmul_flops(n: int = 1024, repeats: int = 5, device: str | torch.device = "cpu", dtype=torch.float32) -> float:
    """Best-of-``repeats`` FLOP/s of an n x n x n matmul (2 n^3 FLOPs) on ``device``."""
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.matmul(a, b)  # warm-up (thread pool, kernels)
    sync()
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / max(best, 1e-12)


def measure_cpu_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """fp32 matmul FLOP/s on the CPU with the current ``torch.get_num_threads()``, best of repeats."""
    return measure_matmul_flops(n, repeats, "cpu", torch.float32)


def _effective_precision(precision: str) -> str:
    """fp32 training whose matmuls run in TF32 (torch.set_float32_matmul_precision) counts as tf32."""
    if precision == "fp32" and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return precision


def resolve_peak_flops(cfg, device: str | torch.device) -> tuple[float, str]:
    """(peak FLOP/s, how it was obtained) for MFU; ``cfg.log.peak_flops`` wins when set."""
    configured = getattr(getattr(cfg, "log", None), "peak_flops", None)
    if configured:
        return float(configured), "configured (log.peak_flops)"
    device = torch.device(device)
    precision = getattr(getattr(cfg, "train", None), "precision", "fp32")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        prec = _effective_precision(precision)
        peak = gpu_peak_flops(name, prec)
        if peak is not None:
            return peak, f"datasheet dense {prec} peak of {gpu_model(name)} ({name})"
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        value = measure_matmul_flops(4096, 10, device, dtype)
        return value, (
            f"measured {precision} 4096^3 matmul on unknown GPU {name!r} (not a datasheet peak; "
            "set log.peak_flops to override)"
        )
    threads = torch.get_num_threads()
    value = measure_cpu_matmul_flops()
    return value, f"measured fp32 1024^3 matmul on CPU, {threads} thread(s), best of 5 (not a datasheet peak)"


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float:
    """Model FLOPs utilization in [0, 1+]; NaN when the peak is unknown or not positive."""
    if not peak or peak <= 0 or not math.isfinite(peak):
        return float("nan")
    return float(tokens_per_s) * float(flops_per_token) / float(peak)
