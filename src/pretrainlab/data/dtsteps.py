"""datatrove glue for `data build`: our pipeline step and the executors that run it.

:class:`TaskStep` is a datatrove ``PipelineStep`` that runs one task of a phase
(for instance :func:`~pretrainlab.data.executor.run_task`: read units, run the stage
prefix, write the part; or the tokenization of one clean part). The executor subclasses only change logging: datatrove logs every task to
the console at INFO level (and a failing task's traceback); ours write each task's
log to ``<work>/logs/task_NNNNN.log`` only and keep the console for progress bars
and one-line errors. Everything else -- task scheduling, completion markers,
skipping finished tasks, sbatch scripts, Ray placement -- is datatrove's.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import resource
import signal
import socket
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from datatrove.executor import base as _dt_base
from datatrove.executor.local import LocalPipelineExecutor
from datatrove.executor.slurm import SlurmPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from loguru import logger

from pretrainlab.config import DataExecutorConfig
from pretrainlab.data.executor import local_workers, python_env_command
from pretrainlab.errors import ConfigError

# A local Ray of ours: no usage report; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (read at `import ray`) makes the
# node take 127.0.0.1 as its address, so its servers listen on the loopback interface only.
LOCAL_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
RAY_OBJECT_STORE_MB = 80  # only the pickled executor goes through it (Ray's minimum is ~75 MB)


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) so the next reading is one task's own; False where
    the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb(since_reset: bool) -> float:
    if since_reset:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TaskStep(PipelineStep):
    """Runs ``func(work_dir, rank)`` for the task's rank: one task of a data build phase or of
    ``data tokenize`` (see :func:`.executor.execute`). The function is named ``"module:attribute"``
    and looked up when the task runs, so the step pickles small and a fresh process (Slurm, Ray)
    imports what it needs."""

    name = "pretrainlab task"
    type = "pretrainlab"

    def __init__(self, func: str, work_dir: str, label: str = "task") -> None:
        super().__init__()
        self.func = func
        self.work_dir, self.label = work_dir, label

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        module, name = self.func.split(":")
        func = getattr(importlib.import_module(module), name)
        exact_peak = reset_peak_rss()
        cpu = time.process_time()
        with self.track_time("task"):
            counts = func(Path(self.work_dir), rank) or {}
        for key, value in counts.items():
            self.stat_update(key, value=value, unit="task")
        self.stat_update("cpu_s", value=time.process_time() - cpu, unit="task")
        # Peak RSS during this task (Linux resets the high-water mark per task; elsewhere it is the
        # process's so far, an upper bound when a pool worker runs several tasks).
        self.stat_update("peak_rss_mb", value=peak_rss_mb(exact_peak), unit="task")
        return None


class _TaskSink:
    """The one loguru sink of a process: the running task's log file (every level) or, between
    tasks, the console (warnings and errors). Switching its file costs nothing, whereas a
    ``logger.add`` per task builds loguru's exception formatter each time (~10 ms: it scans the
    interpreter's install paths), which was 17% of a build of 1 MB tasks."""

    def __init__(self) -> None:
        self.file = None
        self.handler: int | None = None

    def write(self, message) -> None:
        if self.file is not None:
            self.file.write(message)
        elif message.record["level"].no >= logging.WARNING:
            sys.stderr.write(f"datatrove {message.record['level'].name}: {message.record['message']}\n")

    def install(self) -> None:
        if self.handler is None:
            logger.remove()
            self.handler = logger.add(self.write, level="DEBUG", colorize=False, format=_FORMAT)


_FORMAT = "{extra[node]}{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{function}:{line} - {message}"
_SINK = _TaskSink()


def _task_log(logging_dir, rank: int, local_rank: int = 0, node_rank: int = -1):
    logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
    _SINK.install()
    _SINK.file = logfile
    logger.configure(extra={"node": f"[NODE {node_rank}] " if node_rank != -1 else ""})
    logger.info(f"Launching pipeline for {rank=}")
    return logfile


def _close_task_log(logfile) -> None:
    logger.complete()
    _SINK.file = None
    logfile.close()


def quiet_console() -> None:
    """datatrove's messages on the console: warnings and errors only."""
    _SINK.install()
    _SINK.file = None
    logger.configure(extra={"node": ""})


@contextmanager
def _file_only_task_logs(module):
    saved = module.add_task_logger, module.close_task_logger
    module.add_task_logger, module.close_task_logger = _task_log, _close_task_log
    try:
        yield
    finally:
        module.add_task_logger, module.close_task_logger = saved


class LocalExecutor(LocalPipelineExecutor):
    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        with _file_only_task_logs(_dt_base):
            return super()._run_for_rank(rank, local_rank, node_rank)


class SlurmExecutor(SlurmPipelineExecutor):
    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        with _file_only_task_logs(_dt_base):
            return super()._run_for_rank(rank, local_rank, node_rank)

    def launch_merge_stats(self):
        """No extra job per phase to merge datatrove's step statistics: the build keeps its own."""


def _ray_executor_class():
    from datatrove.executor import ray as _dt_ray

    class RayExecutor(_dt_ray.RayPipelineExecutor):
        def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
            # datatrove writes a Ray task's log to <tmp>/ray_logs/logs/task_<rank>.log, then copies it into the
            # work folder: a private tmp keeps two builds (or users) on one node off each other's file.
            with tempfile.TemporaryDirectory(prefix="pretrainlab-ray-") as tmp, _file_only_task_logs(_dt_ray):
                tempfile.tempdir = tmp  # this process runs this one task (a pool process of the task's actor)
                try:
                    return super()._run_for_rank(rank, local_rank, node_rank)
                finally:
                    tempfile.tempdir = None

    return RayExecutor


def make_executor(ex: DataExecutorConfig, work_dir: str, tasks: int, step: TaskStep, depends=None, job_suffix: str = ""):
    """datatrove's executor for ``tasks`` runs of ``step``; Slurm only: ``depends`` (the executor
    of the previous phase: this array starts after it succeeded) and a job-name suffix."""
    quiet_console()
    pipeline = [step]
    if ex.kind == "local":
        return LocalExecutor(pipeline, tasks=tasks, workers=min(tasks, local_workers(ex)), logging_dir=work_dir,
                             start_method="fork" if sys.platform.startswith("linux") else "spawn")
    if ex.kind == "slurm":
        s = ex.slurm
        sbatch_args = dict(s.sbatch_args)
        if depends is not None:
            sbatch_args.setdefault("kill-on-invalid-dep", "yes")
        return SlurmExecutor(
            pipeline, tasks=tasks, time=s.time, partition=s.partition, cpus_per_task=s.cpus_per_task,
            mem_per_cpu_gb=s.mem_per_cpu_gb, workers=ex.workers or -1,
            job_name=f"{s.job_name}-{job_suffix}" if job_suffix else s.job_name, qos=s.qos or "",
            env_command=s.env_command or python_env_command(), sbatch_args=sbatch_args,
            max_array_size=s.max_array_size, logging_dir=work_dir, depends=depends,
        )
    r = ex.ray
    logger.disable("datatrove.executor.ray")  # it warns that a local work folder must be shared: docs/CONFIG.md says so
    try:
        return _ray_executor_class()(pipeline, tasks=tasks, workers=ex.workers or -1, logging_dir=work_dir,
                                     cpus_per_task=r.cpus_per_task, mem_per_cpu_gb=r.mem_per_cpu_gb)
    finally:
        logger.enable("datatrove.executor.ray")


def run_quietly(executor, ex: DataExecutorConfig) -> None:
    quiet_console()
    with ray_cluster(ex) if ex.kind == "ray" else contextlib.nullcontext():  # (a build's phases share one)
        executor.run()


@contextmanager
def ray_cluster(ex: DataExecutorConfig):
    """Ray for a whole command (every phase of a build on one cluster): ``data.executor.ray.address``
    or RAY_ADDRESS, else a new local Ray on 127.0.0.1 (no dashboard, no usage statistics, a small object
    store, ``workers x cpus_per_task`` CPUs), disconnected or stopped at the end. A Ray that is already
    initialized (the caller's) is used as it is. Failing to start or connect is one ConfigError."""
    address = ex.ray.address or os.environ.get("RAY_ADDRESS")
    if not address:
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        _check_reachable(address)
    local = {"num_cpus": local_workers(ex) * ex.ray.cpus_per_task, "include_dashboard": False,
             "object_store_memory": RAY_OBJECT_STORE_MB << 20}
    with _caller_signal_handlers(), _ray_session(ray, ex, address, local):
        yield


@contextmanager
def _caller_signal_handlers():
    """ray.init installs its own SIGTERM handler in the driver and leaves it after shutdown: give the
    caller (a training job's process, a test runner) its handlers back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in saved.items():
                if handler is not None:
                    signal.signal(sig, handler)


@contextmanager
def _ray_session(ray, ex: DataExecutorConfig, address: str | None, local: dict):
    try:
        ray.init(address=address or "local", log_to_driver=False, logging_level=logging.ERROR,
                 **({} if address else local))
    except Exception as exc:
        ray.shutdown()  # whatever it had started
        where = f"connect to the Ray cluster at {address}" if address else "start a local Ray"
        raise ConfigError(f"data.executor.kind=ray: could not {where} ({type(exc).__name__}: "
                          f"{(str(exc).strip().splitlines() or [''])[0]}); check data.executor.ray.address / RAY_ADDRESS "
                          "or use data.executor.kind=local") from None
    try:
        if not address:
            _check_task_fits(ray, ex)
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """ray.init retries an address where nothing listens for minutes: test ``host:port`` first."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and the like: Ray itself looks for a running cluster and fails at once
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise ConfigError(f"data.executor.kind=ray: nothing answers at the Ray address {address} ({exc.strerror or exc}); "
                          "start the cluster (`ray start --head`) or fix data.executor.ray.address / RAY_ADDRESS") from None


def _check_task_fits(ray, ex: DataExecutorConfig) -> None:
    """A task that asks for more than the local Ray has would wait for ever: say so instead."""
    gb = ex.ray.mem_per_cpu_gb * ex.ray.cpus_per_task
    have = ray.cluster_resources().get("memory", 0) / 2**30
    if gb > have:
        raise ConfigError(f"data.executor.ray: a task asks for {gb:g} GB of memory (cpus_per_task x mem_per_cpu_gb) but "
                          f"the local Ray has {have:.1f} GB; lower data.executor.ray.mem_per_cpu_gb")
