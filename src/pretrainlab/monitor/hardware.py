"""Hardware metrics of one rank, sampled on a background thread so the training thread never waits for them.

``HardwareSampler`` reads, every ``interval_s``: psutil (system CPU utilisation,
this process's CPU utilisation and RSS, host memory in use, disk and network
I/O rates) and, when given a CUDA device and nvidia-ml-py is installed, NVML
(GPU utilisation, memory used/total, temperature, power, SM clock, throttle
reasons, uncorrected ECC errors). ``snapshot()`` returns the mean of each field
over the samples since the previous snapshot (the last value for the fields in
``LAST_VALUE``) and starts a new window. Fields that cannot be read are NaN, so
every rank returns the same ``FIELDS`` in the same order (packed into one tensor
for the gather at log steps).
"""

from __future__ import annotations

import math
import threading
import time
import warnings

import psutil

PSUTIL_FIELDS = ("cpu_util_pct", "proc_cpu_pct", "rss_gb", "host_mem_used_pct",
                 "disk_read_mb_s", "disk_write_mb_s", "net_recv_mb_s", "net_sent_mb_s")
GPU_FIELDS = ("gpu_util_pct", "gpu_mem_used_gb", "gpu_mem_total_gb", "gpu_temp_c", "gpu_power_w",
              "gpu_sm_clock_mhz", "gpu_throttle_reasons", "gpu_ecc_errors")
FIELDS = PSUTIL_FIELDS + GPU_FIELDS
TIMING_FIELDS = ("step_s", "local_s", "data_wait_s")  # per-rank step timings (monitor/cluster.py)
RANK_FIELDS = TIMING_FIELDS + FIELDS  # the row each rank contributes at a log step
LAST_VALUE = {"gpu_mem_total_gb", "gpu_throttle_reasons", "gpu_ecc_errors"}  # a bitmask and counters: never averaged
_GB, _MB = 1024**3, 1024**2


class NvmlReader:
    """NVML readings of one GPU; ``open`` returns None when NVML is unavailable (no driver, no nvidia-ml-py)."""

    def __init__(self, nvml, handle):
        self.nvml, self.handle = nvml, handle

    @classmethod
    def open(cls, cuda_index: int) -> "NvmlReader | None":
        try:
            import pynvml  # nvidia-ml-py
            import torch

            pynvml.nvmlInit()
            try:  # NVML numbers GPUs ignoring CUDA_VISIBLE_DEVICES: match by UUID when torch knows it
                uuid = str(torch.cuda.get_device_properties(cuda_index).uuid)
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
            except Exception:
                handle = pynvml.nvmlDeviceGetHandleByIndex(cuda_index)
            return cls(pynvml, handle)
        except Exception:
            return None

    def _try(self, fn, *args, scale: float = 1.0) -> float:
        try:
            return float(fn(self.handle, *args)) * scale
        except Exception:  # NVMLError_NotSupported on some boards (ECC, power): NaN, not an error
            return math.nan

    def read(self) -> dict[str, float]:
        n = self.nvml
        try:
            util = float(n.nvmlDeviceGetUtilizationRates(self.handle).gpu)
        except Exception:
            util = math.nan
        try:
            mem = n.nvmlDeviceGetMemoryInfo(self.handle)
            used, total = mem.used / _GB, mem.total / _GB
        except Exception:
            used = total = math.nan
        return {
            "gpu_util_pct": util, "gpu_mem_used_gb": used, "gpu_mem_total_gb": total,
            "gpu_temp_c": self._try(n.nvmlDeviceGetTemperature, n.NVML_TEMPERATURE_GPU),
            "gpu_power_w": self._try(n.nvmlDeviceGetPowerUsage, scale=1e-3),
            "gpu_sm_clock_mhz": self._try(n.nvmlDeviceGetClockInfo, n.NVML_CLOCK_SM),
            "gpu_throttle_reasons": self._try(n.nvmlDeviceGetCurrentClocksThrottleReasons),
            "gpu_ecc_errors": self._try(n.nvmlDeviceGetTotalEccErrors, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                        n.NVML_VOLATILE_ECC),
        }


class PsutilReader:
    """CPU, memory, disk and network of this host and process; I/O as rates since the previous read."""

    def __init__(self):
        self.proc = psutil.Process()
        self.proc.cpu_percent(None)  # the first call only starts the measurement window
        psutil.cpu_percent(None)
        self.last = (time.monotonic(), psutil.disk_io_counters(), psutil.net_io_counters())

    @staticmethod
    def _rate(new, old, attr: str, dt: float) -> float:
        if new is None or old is None or dt <= 0:
            return math.nan
        return (getattr(new, attr) - getattr(old, attr)) / _MB / dt

    def read(self) -> dict[str, float]:
        now, disk, net = time.monotonic(), psutil.disk_io_counters(), psutil.net_io_counters()
        t0, disk0, net0 = self.last
        self.last = (now, disk, net)
        dt = now - t0
        return {
            "cpu_util_pct": psutil.cpu_percent(None), "proc_cpu_pct": self.proc.cpu_percent(None),
            "rss_gb": self.proc.memory_info().rss / _GB, "host_mem_used_pct": psutil.virtual_memory().percent,
            "disk_read_mb_s": self._rate(disk, disk0, "read_bytes", dt),
            "disk_write_mb_s": self._rate(disk, disk0, "write_bytes", dt),
            "net_recv_mb_s": self._rate(net, net0, "bytes_recv", dt),
            "net_sent_mb_s": self._rate(net, net0, "bytes_sent", dt),
        }


class HardwareSampler:
    """Samples every ``interval_s`` on a daemon thread; ``snapshot()`` gives the window's means (see module doc)."""

    def __init__(self, interval_s: float = 1.0, cuda_index: int | None = None):
        self.interval_s = interval_s
        self.readers = [PsutilReader()]
        gpu = NvmlReader.open(cuda_index) if cuda_index is not None else None
        if gpu is not None:
            self.readers.append(gpu)
        self.has_gpu = gpu is not None
        self._lock = threading.Lock()
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sample_error: str | None = None  # the first reading that failed in the background, if any
        self.sample_seconds = 0.0  # sampler thread CPU time (the overhead it adds), see benchmarks/hardware_overhead.py
        self.samples = 0

    def sample(self) -> None:
        """One reading of every source, added to the current window."""
        t0 = time.thread_time()
        values: dict[str, float] = {}
        for reader in self.readers:
            values.update(reader.read())
        with self._lock:
            for k, v in values.items():
                if math.isfinite(v):
                    self._sums[k] = self._sums.get(k, 0.0) + v
                    self._counts[k] = self._counts.get(k, 0) + 1
                    self._last[k] = v
            self.samples += 1
            self.sample_seconds += time.thread_time() - t0

    def snapshot(self) -> dict[str, float]:
        """Every field of ``FIELDS``: the window's mean (or last value), NaN if never read; starts a new window."""
        with self._lock:
            out = {}
            for k in FIELDS:
                if k in LAST_VALUE:
                    out[k] = self._last.get(k, math.nan)
                else:
                    out[k] = self._sums[k] / self._counts[k] if self._counts.get(k) else self._last.get(k, math.nan)
            self._sums.clear()
            self._counts.clear()
        return out

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception as err:  # a failing reading must never take the run down; the field stays NaN
                if self.sample_error is None:  # said once, not every interval
                    self.sample_error = f"{type(err).__name__}: {err}"
                    warnings.warn(f"hardware sampling failed, its readings stay empty: {self.sample_error}", stacklevel=1)

    def start(self) -> "HardwareSampler":
        """Start (or, after ``stop``, restart) the sampling thread."""
        self._stop.clear()
        self.sample()  # a first value for every field, so even the first log step has one
        self._thread = threading.Thread(target=self._loop, name="pretrainlab-hw-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(2.0, 2 * self.interval_s))
            self._thread = None
