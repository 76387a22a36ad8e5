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

import importlib
import logging
import resource
import sys
from contextlib import contextmanager
from pathlib import Path

from datatrove.executor import base as _dt_base
from datatrove.executor.local import LocalPipelineExecutor
from datatrove.executor.slurm import SlurmPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from loguru import logger

from pretrainlab.config import DataExecutorConfig
from pretrainlab.data.executor import local_workers, python_env_command


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
        with self.track_time("task"):
            counts = func(Path(self.work_dir), rank) or {}
        for key, value in counts.items():
            self.stat_update(key, value=value, unit="task")
        # Peak RSS of the process so far (a pool worker runs several tasks: an upper bound per task).
        self.stat_update("peak_rss_mb", value=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, unit="task")
        return None


def _task_log(logging_dir, rank: int, local_rank: int = 0, node_rank: int = -1):
    logger.remove()
    logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
    prefix = f"[NODE {node_rank}] " if node_rank != -1 else ""
    logger.add(logfile, level="DEBUG", colorize=False,
               format=prefix + "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{function}:{line} - {message}")
    logger.info(f"Launching pipeline for {rank=}")
    return logfile


def _close_task_log(logfile) -> None:
    logger.complete()
    quiet_console()
    logfile.close()


def quiet_console() -> None:
    """datatrove's messages on the console: warnings and errors only."""
    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="datatrove {level}: {message}")


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
            with _file_only_task_logs(_dt_ray):
                return super()._run_for_rank(rank, local_rank, node_rank)

    return RayExecutor


def make_executor(ex: DataExecutorConfig, work_dir: str, tasks: int, step: TaskStep, depends=None, job_suffix: str = ""):
    """datatrove's executor for ``tasks`` runs of ``step``; Slurm only: ``depends`` (the executor
    of the previous phase: this array starts after it succeeded) and a job-name suffix."""
    quiet_console()  # (the Ray executor warns that a local work folder must be shared: docs/CONFIG.md says so)
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
    return _ray_executor_class()(pipeline, tasks=tasks, workers=ex.workers or -1, logging_dir=work_dir,
                                 cpus_per_task=r.cpus_per_task, mem_per_cpu_gb=r.mem_per_cpu_gb)


def run_quietly(executor, ex: DataExecutorConfig) -> None:
    quiet_console()
    if ex.kind == "ray":
        import ray

        if not ray.is_initialized():
            ray.init(address=ex.ray.address, log_to_driver=False, include_dashboard=False, logging_level=logging.WARNING)
            try:
                executor.run()
            finally:
                ray.shutdown()  # we started it: stop the local Ray processes / disconnect
            return
    executor.run()
