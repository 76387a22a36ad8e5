"""Device presets for the planner: memory, bandwidths and power beside the shared peak table.

Peak FLOP/s come from ``monitor.flops`` (the one datasheet table MFU also
uses); this module adds what only the planner needs. Memory is what the device
reports (nvidia-smi), in bytes; bandwidths are datasheet values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pretrainlab.errors import ConfigError
from pretrainlab.monitor.flops import gpu_model, gpu_peak_flops

MIB = 1024**2


@dataclass(frozen=True)
class Hardware:
    name: str
    peak_flops: float  # per device, for the chosen precision, dense
    peak_source: str
    memory_bytes: float
    hbm_bytes_per_s: float | None
    interconnect_bytes_per_s: float | None  # per device, intra-node (NVLink / PCIe)
    power_w: float

    def to_dict(self) -> dict:
        return asdict(self)


# name -> (datasheet name understood by monitor.flops.gpu_model, reported MiB, HBM B/s, interconnect B/s, TDP W)
_DEVICES: dict[str, tuple[str, float, float, float, float]] = {
    "a100-40gb": ("A100-SXM4-40GB", 40_960, 1.555e12, 600e9, 400),
    "a100-80gb": ("A100-SXM4-80GB", 81_920, 2.039e12, 600e9, 400),
    "h100-sxm": ("H100 80GB HBM3", 81_559, 3.35e12, 900e9, 700),
    "h100-pcie": ("H100 PCIe", 81_559, 2.0e12, 128e9, 350),
    "h200": ("H200", 143_771, 4.8e12, 900e9, 700),
}


def resolve_hardware(
    preset: str,
    precision: str,
    peak_tflops: float | None = None,
    memory_gb: float | None = None,
    power_w: float | None = None,
) -> Hardware:
    """A device spec from a preset (or 'custom') with optional per-field overrides."""
    if preset == "custom":
        if peak_tflops is None or memory_gb is None:
            raise ConfigError(
                "plan.hardware=custom needs plan.peak_tflops and plan.device_memory_gb "
                "(e.g. --peak-tflops 989.5 --device-memory-gb 80)"
            )
        return Hardware("custom", peak_tflops * 1e12, "configured (plan.peak_tflops)", memory_gb * 1e9,
                        None, None, power_w or 700.0)
    if preset not in _DEVICES:
        raise ConfigError(f"unknown hardware {preset!r}; choose from {sorted(_DEVICES) + ['custom']}")
    device_name, mib, hbm, link, tdp = _DEVICES[preset]
    if peak_tflops is not None:
        peak, source = peak_tflops * 1e12, "configured (plan.peak_tflops)"
    else:
        peak = gpu_peak_flops(device_name, precision)
        if peak is None:
            raise ConfigError(
                f"{preset} has no dense {precision} peak in the datasheet table (A100 has no fp8); "
                f"choose --precision bf16 or set --peak-tflops"
            )
        source = f"datasheet dense {precision} peak of {gpu_model(device_name)}"
    memory = memory_gb * 1e9 if memory_gb is not None else mib * MIB
    return Hardware(preset, peak, source, memory, hbm, link, power_w or tdp)
