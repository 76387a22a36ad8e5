"""`data build` as phases of datatrove tasks; finished tasks are skipped on a re-run.

The approved sources are cut into *work units* -- a file, a run of small files of one
source, or a byte range of a large plain JSONL file (cut at line starts found while the
input is hashed, so one huge file spreads over many tasks). A unit is also one output part
(``train-NNNNN.jsonl``), so its size (``data.executor.unit_mb``) is the only thing that
shapes the parts: never the number of tasks or workers. Units, in read order, are dealt out
in contiguous runs to ``tasks`` *prefix tasks*. The phases (:func:`phases`):

1. ``prefix`` (one task per unit run, :func:`run_task`): read the units, run the stages
   before the first stateful one, write a *part* (pickled ``(unit, document, trace)``
   batches in read order, then the stages' ``finish()`` statistics) and the dedup
   signatures, sliced per bucket (:class:`.dedupdist.SigWriter`);
2. the dedup rounds of ``data.stages`` in order (:mod:`.dedupdist`): ``exact`` (one task
   per digest bucket), ``near-buckets`` (one per band-hash bucket), ``near-cluster`` (one),
   ``near-verify`` (one per component shard);
3. ``filter`` (one task per prefix task, :func:`pretrainlab.data.pipeline.filter_task`):
   replay the part through the remaining stages, the dedup stages as decided, and write the
   units' parts, a piece of the quarantine and the counts.

The main process then only concatenates the quarantine pieces in order, adds the counts
and moves the parts into the corpus: the corpus, quarantine and statistics equal an
in-process build's. Every task writes its outputs atomically before datatrove's completion
marker, so after a kill -9 a re-run runs only the unfinished tasks of the unfinished phases.

Executors (``data.executor.kind``): ``local`` (datatrove's LocalPipelineExecutor, a
process pool on this machine), ``slurm`` (SlurmPipelineExecutor: one job array per
phase, chained by ``afterok`` dependencies; the work folder must be on a filesystem the
nodes share) and ``ray`` (RayPipelineExecutor, one actor per task, every phase on one
cluster: ``data.executor.ray.address``/RAY_ADDRESS or a local Ray on 127.0.0.1, see
:func:`.dtsteps.ray_cluster`; needs ``pip install 'pretrainlab[ray]'``). datatrove is
imported only when an executor runs (its import costs ~0.4 s); the classes built on it
live in :mod:`.dtsteps`.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pretrainlab.config import DataConfig, DataExecutorConfig
from pretrainlab.data import dedupdist
from pretrainlab.data.parallel import Trace, resolve_workers, run_stages
from pretrainlab.data.readers import read_source
from pretrainlab.data.sources import BadRecord, SourceSpec
from pretrainlab.data.stages import STAGES, Document, load_builtin_stages
from pretrainlab.errors import ConfigError, DataError
from pretrainlab.fsio import atomic_open, atomic_write_bytes
from pretrainlab.progress import console, progress_bar

BATCH_RECORDS = 256  # records per pickled batch in a part
PLAN_FILE = "plan.pkl"
BUCKET_BYTES = 256_000_000  # input bytes per dedup bucket (data.executor.dedup_buckets=0)
MOVED_MARK = "out.moved"  # the filter tasks' parts were moved into a corpus: run them again if needed


@dataclass(frozen=True)
class Unit:
    """A piece of one source read by one task: whole files (indices into ``SourceSpec.files``),
    or a byte range ``(start, end, line number at start)`` of one plain JSONL file."""

    source: str
    files: tuple[int, ...]
    bytes: int
    byte_range: tuple[int, int, int] | None = None


@dataclass
class Plan:
    """Everything a task needs, pickled into the work folder (tasks may run on other machines)."""

    cfg: DataConfig
    prefix: list[str]  # names of the stages the tasks run
    sources: dict[str, SourceSpec]  # absolute paths
    units: list[Unit]
    ranges: list[tuple[int, int]]  # task -> [lo, hi) unit indices
    after: list[str] = dataclasses.field(default_factory=list)  # stages after the prefix, up to the last dedup round
    rounds: list[str] = dataclasses.field(default_factory=list)  # the dedup stages, in order (see .dedupdist)
    buckets: int = 1  # tasks per dedup round
    part_numbers: list[int] = dataclasses.field(default_factory=list)  # unit -> its output part within its source

    def task_bytes(self, rank: int) -> int:
        lo, hi = self.ranges[rank]
        return sum(u.bytes for u in self.units[lo:hi])

    def part_index(self, ui: int) -> int:
        """Unit ``ui``'s output part number within its source."""
        return self.part_numbers[ui]


def check_executor(ex: DataExecutorConfig) -> None:
    """Configuration problems of the chosen executor, before any data is read."""
    if ex.kind == "slurm":
        if not ex.slurm.partition:
            raise ConfigError("data.executor.kind=slurm needs data.executor.slurm.partition (the Slurm partition to run on)")
        if shutil.which("sbatch") is None:
            raise ConfigError("data.executor.kind=slurm: `sbatch` not found on PATH; run `data build` on a Slurm login node")
    if ex.kind == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("data.executor.kind=ray needs the ray package: pip install 'pretrainlab[ray]' (or pip install ray)")


def unit_target_bytes(ex: DataExecutorConfig) -> int:
    """Work-unit size: data.executor.unit_mb. A unit is also one output part of the clean corpus,
    so it must not depend on the number of tasks or workers (outputs identical for any of them)."""
    return max(1, int(ex.unit_mb * 1e6))


def plan_units(specs: list[SourceSpec], sizes: dict[str, list[int]], cuts: dict[tuple[str, int], list],
               unit_bytes: int) -> list[Unit]:
    """Units in read order: files with cut points become byte ranges; runs of smaller files of a
    source are grouped up to ``unit_bytes``."""
    units: list[Unit] = []
    for spec in specs:
        group: list[int] = []
        group_bytes = 0
        for i, size in enumerate(sizes[spec.name]):
            file_cuts = cuts.get((spec.name, i))
            if group and (file_cuts or group_bytes + size > unit_bytes):
                units.append(Unit(spec.name, tuple(group), group_bytes))
                group, group_bytes = [], 0
            if file_cuts:
                bounds = [(0, 1), *file_cuts, (size, None)]
                for (start, line), (end, _) in zip(bounds, bounds[1:]):
                    units.append(Unit(spec.name, (i,), end - start, (start, end, line)))
                continue
            group.append(i)
            group_bytes += size
        if group:
            units.append(Unit(spec.name, tuple(group), group_bytes))
    return units


def assign_tasks(units: list[Unit], tasks: int) -> list[tuple[int, int]]:
    """Contiguous runs of units per task, balanced by bytes (a task may get none)."""
    weights = [max(1, u.bytes) for u in units]
    total = sum(weights)
    owner, cum = [], 0
    for w in weights:
        owner.append(min(tasks - 1, int((cum + w / 2) * tasks / total)))
        cum += w
    return [(bisect.bisect_left(owner, t), bisect.bisect_right(owner, t)) for t in range(tasks)]


def make_plan(cfg: DataConfig, stage_names: list[str], prefix: int, rounds: list[str], specs: list[SourceSpec],
              units: list[Unit]) -> Plan:
    tasks = cfg.executor.tasks or len(units)
    sources = {s.name: dataclasses.replace(s, path=s.path.absolute(), files=[f.absolute() for f in s.files]) for s in specs}
    last = max((stage_names.index(r) for r in rounds), default=prefix - 1)
    # One dedup bucket per 256 MB of input: a bucket task's slice (~20 MB of band keys) stays the same size
    # however large the corpus grows.
    buckets = cfg.executor.dedup_buckets or min(tasks, len(units), -(-sum(u.bytes for u in units) // BUCKET_BYTES))
    seen: dict[str, int] = {}
    numbers: list[int] = []
    for u in units:
        numbers.append(seen.get(u.source, 0))
        seen[u.source] = numbers[-1] + 1
    return Plan(cfg, stage_names[:prefix], sources, units, assign_tasks(units, tasks),
                stage_names[prefix:last + 1], rounds, max(1, buckets), numbers)


# --------------------------------------------------------------------------- the task (runs in workers)

_PLANS: dict[str, Plan] = {}


def load_plan(work_dir: Path) -> Plan:
    key = str(work_dir)
    if key not in _PLANS:
        with open(work_dir / PLAN_FILE, "rb") as fh:
            _PLANS[key] = pickle.load(fh)
    return _PLANS[key]


def part_path(work_dir: Path, rank: int) -> Path:
    return work_dir / "parts" / f"{rank:05d}.pkl"


def run_task(work_dir: Path, rank: int) -> dict:
    """Read the task's units, run the prefix stages, write its part atomically; returns counts."""
    plan = load_plan(work_dir)
    load_builtin_stages()  # a fresh process (Slurm, Ray) has not imported them yet
    stages = [STAGES[n](plan.cfg) for n in plan.prefix]
    after = [STAGES[n](plan.cfg) for n in plan.after]  # throw-away copies: only for the dedup signatures
    for s in [*stages, *after]:
        s.bind(plan.sources)
        s.remote = True
    counts = {"documents": 0, "bad_records": 0, "removed": 0, "bytes": plan.task_bytes(rank)}
    lo, hi = plan.ranges[rank]
    sigs = dedupdist.SigWriter(work_dir, rank, plan.cfg, after, plan.buckets)
    with atomic_open(part_path(work_dir, rank), "wb") as fh:
        batch: list = []
        for ui in range(lo, hi):
            unit = plan.units[ui]
            spec = plan.sources[unit.source]
            skip = frozenset(spec.skip_stages)
            for item in read_source(spec, plan.cfg.max_doc_bytes, list(unit.files), unit.byte_range):
                if isinstance(item, Document):
                    trace = run_stages(stages, item, skip)
                    counts["documents"] += 1
                    sigs.add(trace.doc, skip)
                    if trace.doc is None:
                        counts["removed"] += 1
                        item = Document(item.id, "", item.source)  # only id and source are needed
                    else:
                        item = trace.doc
                    batch.append((ui, item, trace))
                else:
                    counts["bad_records"] += 1
                    batch.append((ui, item, None))
                if len(batch) >= BATCH_RECORDS:
                    pickle.dump(batch, fh, protocol=pickle.HIGHEST_PROTOCOL)
                    batch = []
        if batch:
            pickle.dump(batch, fh, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.dump({"extras": {s.name: s.finish() for s in stages}}, fh, protocol=pickle.HIGHEST_PROTOCOL)
    sigs.close()
    return counts


# --------------------------------------------------------------------------- the main process


class Parts:
    """The task parts, read back in task order (= read order): ``of_unit()`` yields a unit's
    ``(document or bad record, trace or None)``; ``extras`` collects the stages' statistics."""

    def __init__(self, work_dir: Path, plan: Plan, ranks: list[int] | None = None) -> None:
        self.work_dir, self.plan = work_dir, plan
        self.ranks = list(range(len(plan.ranges))) if ranks is None else ranks
        self.extras: list[dict] = []
        self._it = self._records()
        self._head = None

    def _records(self) -> Iterator[tuple[int, Document | BadRecord, Trace | None]]:
        for rank in self.ranks:
            with open(part_path(self.work_dir, rank), "rb") as fh:
                while True:
                    try:
                        obj = pickle.load(fh)
                    except EOFError:
                        break
                    if isinstance(obj, dict):
                        self.extras.append(obj["extras"])
                        continue
                    yield from obj

    def of_unit(self, index: int) -> Iterator[tuple[Document | BadRecord, Trace | None]]:
        """The records of work unit ``index`` (units come in plan order, each contiguous)."""
        while True:
            if self._head is None:
                self._head = next(self._it, None)
                if self._head is None:
                    return
            ui, item, trace = self._head
            if ui != index:
                return
            self._head = None
            yield item, trace

    def drain(self) -> None:
        """Read to the end (so every part's statistics are collected)."""
        for _ in self._it:
            raise RuntimeError("internal error: task parts hold records of no listed source")

    def merged_extras(self) -> dict[str, dict]:
        return {n: STAGES[n].merge_extras([p[n] for p in self.extras if n in p]) for n in self.plan.prefix}


def work_root(ex: DataExecutorConfig, out_dir: Path) -> Path:
    return Path(ex.work_dir) if ex.work_dir else out_dir.with_name(out_dir.name + ".work")


def plan_dir(root: Path, manifest_id: str, plan: Plan) -> Path:
    """One folder per plan: same inputs, config, code and unit layout -> same folder (resume)."""
    layout = json.dumps([manifest_id, [dataclasses.astuple(u) for u in plan.units], plan.ranges], default=str)
    return root / f"plan-{hashlib.sha256(layout.encode()).hexdigest()[:16]}"


def _completed(work_dir: Path) -> set[int]:
    try:
        return {int(n) for n in os.listdir(work_dir / "completions") if n.isdigit()}
    except FileNotFoundError:
        return set()


def phases(plan: Plan) -> list[tuple[str, str, list[float]]]:
    """The build's phases in order: (name, task function, input MB per task)."""
    ranks, b = len(plan.ranges), plan.buckets
    per_rank = [plan.task_bytes(r) / 1e6 for r in range(ranks)]
    out = [("prefix", f"{__name__}:run_task", per_rank)]
    for name in plan.rounds:
        if name == "exact_dedup":
            out.append(("exact", f"{__name__}:exact_phase", [0.0] * b))
        else:
            out += [("near-buckets", f"{__name__}:near_buckets_phase", [0.0] * b),
                    ("near-cluster", f"{__name__}:near_cluster_phase", [0.0]),
                    ("near-verify", f"{__name__}:near_verify_phase", [0.0] * b)]
    out.append(("filter", "pretrainlab.data.pipeline:filter_task", per_rank))
    return out


def phase_dir(work_dir: Path, name: str) -> Path:
    """A phase's datatrove folder (completions, logs); the prefix phase uses the work folder itself."""
    return work_dir if name == "prefix" else work_dir / "phases" / name


def _plan_of(phase: Path) -> tuple[Path, Plan]:
    work_dir = phase.parent.parent
    return work_dir, load_plan(work_dir)


def exact_phase(phase: Path, rank: int) -> dict:
    work_dir, plan = _plan_of(phase)
    return dedupdist.exact_task(work_dir, rank, len(plan.ranges), plan.buckets, plan.rounds)


def near_buckets_phase(phase: Path, rank: int) -> dict:
    work_dir, plan = _plan_of(phase)
    return dedupdist.near_bucket_task(work_dir, rank, len(plan.ranges), plan.buckets, plan.rounds)


def near_cluster_phase(phase: Path, rank: int) -> dict:
    work_dir, plan = _plan_of(phase)
    return dedupdist.near_cluster_task(work_dir, rank, plan.buckets, plan.buckets)


def near_verify_phase(phase: Path, rank: int) -> dict:
    work_dir, plan = _plan_of(phase)
    return dedupdist.near_verify_task(work_dir, rank, len(plan.ranges), plan.cfg)


def run_tasks(plan: Plan, ex: DataExecutorConfig, root: Path, manifest_id: str) -> Path | None:
    """Run the plan's phases on the configured executor (finished tasks are skipped); returns the
    work folder, or None when a Slurm job was submitted without waiting."""
    work_dir = plan_dir(root, manifest_id, plan)
    if root.is_dir():  # parts of other plans (changed inputs, config or code) can never be used again
        for old in root.iterdir():
            if old != work_dir and old.name.startswith("plan-") and (old / PLAN_FILE).exists():
                shutil.rmtree(old, ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(work_dir / PLAN_FILE, pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL))
    tasks = len(plan.ranges)
    done = _completed(work_dir)
    for rank in [r for r in done if not part_path(work_dir, r).is_file()]:  # marked done but its part is gone
        (work_dir / "completions" / f"{rank:05d}").unlink()
        done.discard(rank)
    if done:
        console.print(f"data tasks: {len(done)} of {tasks} already finished in {work_dir}; running the rest")

    if (work_dir / MOVED_MARK).exists():  # a build moved the filter outputs into a corpus, then failed
        shutil.rmtree(phase_dir(work_dir, "filter"), ignore_errors=True)
        shutil.rmtree(work_dir / "out", ignore_errors=True)
        (work_dir / MOVED_MARK).unlink()
    if ex.kind == "slurm":
        return work_dir if _run_slurm_chain(plan, ex, work_dir) else None
    with _cluster(ex):  # Ray: one cluster for all phases (a start costs seconds)
        for name, func, task_mb in phases(plan):
            label = "data tasks" if name == "prefix" else f"data {name} tasks"
            if not execute(func, ex, phase_dir(work_dir, name), task_mb, label):
                return None
    return work_dir


def _cluster(ex: DataExecutorConfig):
    """The Ray cluster the phases share (see :func:`.dtsteps.ray_cluster`); nothing for the other kinds."""
    if ex.kind != "ray":
        return contextlib.nullcontext()
    from pretrainlab.data import dtsteps  # imports this module (a circle)

    return dtsteps.ray_cluster(ex)


def _run_slurm_chain(plan: Plan, ex: DataExecutorConfig, work_dir: Path) -> bool:
    """Submit every unfinished phase as one job array, each depending on the one before
    (``afterok``; ``--kill-on-invalid-dep`` removes the rest of the chain when a phase fails),
    unless a chain of this plan is still queued or running; then wait for it. Returns False when
    not waiting (data.executor.slurm.wait=false); raises a DataError when a phase did not finish."""
    from pretrainlab.data import dtsteps  # imports this module (a circle)

    todo = [(n, f, mb) for n, f, mb in phases(plan) if len(_completed(phase_dir(work_dir, n))) < len(mb)]
    job_file = work_dir / "slurm_jobs.json"
    jobs: list[str] = []
    if job_file.is_file():
        jobs = [j for j in json.loads(job_file.read_text(encoding="utf-8")).get("jobs", []) if _slurm_job_alive(j)]
        if jobs:
            console.print(f"slurm jobs {', '.join(jobs)} of this build are still queued or running; waiting for them")
    if todo and not jobs:
        previous = None
        executors = []
        for name, func, task_mb in todo:
            d = phase_dir(work_dir, name)
            d.mkdir(parents=True, exist_ok=True)
            e = dtsteps.make_executor(ex, str(d), len(task_mb), dtsteps.TaskStep(func, str(d), name), depends=previous,
                                      job_suffix=name)
            executors.append(e)
            previous = e
        dtsteps.run_quietly(previous, ex)  # launches the chain, dependencies first
        jobs = [str(e.job_id) for e in executors if str(e.job_id) != "-1"]
        atomic_write_bytes(job_file, json.dumps({"jobs": jobs}).encode())
        console.print(f"submitted slurm jobs {', '.join(jobs)} (phases {', '.join(n for n, _, _ in todo)}; "
                      f"scripts and logs under {work_dir})")
    if jobs and not ex.slurm.wait:
        console.print(f"not waiting (data.executor.slurm.wait=false); when jobs {', '.join(jobs)} are done, re-run "
                      "`pretrainlab data build` to collect the corpus")
        return False
    last_name, _, last_mb = phases(plan)[-1]
    first_mb = phases(plan)[0][2]
    with _TaskProgress(first_mb, work_dir, "data tasks (slurm)"):
        while (len(_completed(phase_dir(work_dir, last_name))) < len(last_mb)
               and any(_slurm_job_alive(j) for j in jobs)):
            time.sleep(ex.slurm.poll_seconds)
    for name, _, task_mb in phases(plan):
        d = phase_dir(work_dir, name)
        missing = sorted(set(range(len(task_mb))) - _completed(d))
        if missing:
            raise DataError(f"{len(missing)} of {len(task_mb)} data {name} tasks did not finish on Slurm; logs: "
                            f"{d}/logs/task_{missing[0]:05d}.log (and slurm_logs); re-run `pretrainlab data build` "
                            "to run only those tasks")
    return True


def execute(func: str, ex: DataExecutorConfig, work_dir: Path, task_mb: list[float], label: str) -> bool:
    """Run ``func(work_dir, rank)`` (``func`` = ``"module:function"``) for every rank without a completion marker in ``work_dir``, as
    datatrove tasks on the configured executor; ``task_mb`` (input MB per task) feeds the progress
    bar. Returns False when a Slurm job was submitted without waiting; raises a DataError naming
    the log of the first task that did not finish (a re-run runs only the unfinished ones)."""
    from pretrainlab.data import dtsteps  # imports this module (a circle) and datatrove's executors

    tasks = len(task_mb)
    executor = dtsteps.make_executor(ex, str(work_dir), tasks, dtsteps.TaskStep(func, str(work_dir), label))
    failure: BaseException | None = None
    if ex.kind == "slurm":
        if _run_slurm(executor, ex, work_dir, task_mb, label) is not None:
            return False
    else:
        try:
            with _TaskProgress(task_mb, work_dir, f"{label} ({ex.kind})"):
                dtsteps.run_quietly(executor, ex)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a task failed: the finished ones stay finished
            failure = exc
    missing = sorted(set(range(tasks)) - _completed(work_dir))
    if missing:
        first = f" (first error: {type(failure).__name__}: {str(failure).splitlines()[0] if str(failure) else ''})" if failure else ""
        raise DataError(
            f"{len(missing)} of {tasks} {label} did not finish{first}; logs: {work_dir}/logs/task_{missing[0]:05d}.log; "
            "re-run the command to run only those tasks"
        )
    return True


class _TaskProgress:
    """A progress bar (MB of input, throughput, ETA) fed by polling datatrove's completion markers."""

    def __init__(self, task_mb: list[float], work_dir: Path, label: str) -> None:
        self.task_mb, self.work_dir, self.label = task_mb, work_dir, label
        self.stop = threading.Event()

    def __enter__(self):
        self._cm = progress_bar(self.label, sum(self.task_mb), unit="MB")
        bar = self._cm.__enter__()
        seen: set[int] = set()

        def poll() -> None:
            while True:
                new = _completed(self.work_dir) - seen
                for rank in new:
                    bar.advance(self.task_mb[rank])
                seen.update(new)
                if self.stop.wait(0.25):
                    return

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self._thread.join()
        return self._cm.__exit__(*exc)


def _slurm_job_alive(job_id: str) -> bool:
    try:
        out = subprocess.run(["squeue", "-h", "-j", str(job_id)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def _run_slurm(executor, ex: DataExecutorConfig, work_dir: Path, task_mb: list[float], label: str) -> str | None:
    """Submit the job array (unless one of this plan is still queued or running), then wait for
    it; returns the job id when not waiting (data.executor.slurm.wait=false)."""
    job_file = work_dir / "slurm_job.json"
    job_id = None
    if job_file.is_file():
        previous = json.loads(job_file.read_text(encoding="utf-8")).get("job_id")
        if previous and _slurm_job_alive(previous):
            job_id = previous
            console.print(f"slurm job {job_id} of this build is still queued or running; waiting for it")
    tasks = len(task_mb)
    if job_id is None and len(_completed(work_dir)) < tasks:
        from pretrainlab.data import dtsteps  # imports this module (a circle)

        dtsteps.run_quietly(executor, ex)  # writes the sbatch script into the work folder and calls sbatch
        job_id = str(executor.job_id)
        atomic_write_bytes(job_file, json.dumps({"job_id": job_id}).encode())
        console.print(f"submitted slurm job {job_id} ({tasks - len(_completed(work_dir))} tasks, script "
                      f"{work_dir / 'launch_script.slurm'}, logs {work_dir / 'logs'})")
    if job_id is None:
        return None
    if not ex.slurm.wait:
        console.print(f"not waiting (data.executor.slurm.wait=false); when job {job_id} is done, re-run "
                      "the command to collect its results")
        return job_id
    with _TaskProgress(task_mb, work_dir, f"{label} (slurm)"):
        while len(_completed(work_dir)) < tasks and _slurm_job_alive(job_id):
            time.sleep(ex.slurm.poll_seconds)
    return None


def finish_work(root: Path, work_dir: Path, keep: bool) -> None:
    """After a successful build: remove the work folder (parts are a full copy of the corpus)."""
    if keep:
        return
    shutil.rmtree(work_dir, ignore_errors=True)
    try:
        root.rmdir()  # only when empty
    except OSError:
        pass


def local_workers(ex: DataExecutorConfig) -> int:
    return resolve_workers(ex.workers)


def python_env_command() -> str:
    """Shell line that activates the Python environment running this process (for Slurm tasks)."""
    if sys.prefix != sys.base_prefix and (Path(sys.prefix) / "bin" / "activate").is_file():
        return f"source {Path(sys.prefix) / 'bin' / 'activate'}"
    return f"export PATH={Path(sys.executable).parent}:$PATH"
