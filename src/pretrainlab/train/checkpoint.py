"""Checkpoints: one directory per step, valid only once its completion marker exists.

Two formats share one layout of ``<run>/checkpoints/step_00000100/``:

full (rank 0 writes state gathered to it)::

    model.pt      model state dict (fp32 master weights)
    optim.pt      optimizer state dict

sharded (``torch.distributed.checkpoint``: every rank writes its own shard)::

    __0_0.distcp, __1_0.distcp, ...   each rank's slices of model and optimizer state
    .metadata                          which slice of which tensor is where (lets any world size load it)

and in both::

    rng.pt        torch / numpy / python RNG states
    state.json    trainer state: step, tokens seen, data-loader state, ...
    meta.json     step, tokens, format, world size, wall time (for humans and tools)
    COMPLETE      marker, written last: every file's size and CRC-32 (``integrity``)

Everything is written into a hidden temporary directory, fsynced, marked
complete, then renamed into place, so a kill -9 at any instant leaves either no
new checkpoint or a whole one; ``latest_checkpoint`` ignores anything unmarked.
A sharded save is collective: all ranks write into the same temporary directory,
each checksums its own shards, rank 0 adds the rest and renames, and every rank
learns whether it succeeded. A failed save removes its temporary directory and
says in one line where, why and how much space it needed. Bytes damaged after
the save are caught by ``verify`` before use (``recovery.find_resumable``).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from pretrainlab.errors import UserError
from pretrainlab.fsio import atomic_write_json, remove_stale_temporaries, replace_dir
from pretrainlab.train.integrity import MARKER, ChecksumWriter, file_entry, verify, write_marker  # noqa: F401 (re-exported)
# DCP says this on every save/load without a process group, which is how one-process runs and export use it.
warnings.filterwarnings("ignore", message=r"torch\.distributed is (disabled, )?unavailable or uninitialized, assuming")
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def is_complete(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and child.is_dir() and is_complete(child):
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def _torch_save(obj: Any, path: Path) -> dict:
    """``torch.save`` to ``path``, fsynced; returns the file's manifest entry (size, CRC-32 computed while writing)."""
    with open(path, "wb") as fh:
        out = ChecksumWriter(fh)
        try:
            torch.save(obj, out)
        except RuntimeError:
            if out.error is not None:  # torch's zip writer reports ENOSPC as "unexpected pos ..."
                raise out.error from None
            raise
        fh.flush()
        os.fsync(fh.fileno())
    return out.entry()


def _write_json(path: Path, obj: Any) -> dict:
    atomic_write_json(path, obj)
    return file_entry(path)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model_state: dict,
    optim_state: dict,
    rng_state: dict,
    trainer_state: dict,
    meta: dict | None = None,
) -> Path:
    """Write a complete checkpoint for ``step`` atomically; returns its directory.

    The completion marker lists every file's size and CRC-32 (``verify``). A
    failed write (disk full, permission, I/O error) removes the partial
    temporary directory, leaves every earlier checkpoint untouched and raises a
    one-line ``UserError`` naming the directory, the space needed and the newest
    intact checkpoint.
    """
    root = checkpoint_root(run_dir)
    final = root / step_dir_name(step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_temporaries(run_dir)  # a killed save's leftovers would only take the space this one needs
        tmp.mkdir()
        files = {"model.pt": _torch_save(model_state, tmp / "model.pt"),
                 "optim.pt": _torch_save(optim_state, tmp / "optim.pt"),
                 "rng.pt": _torch_save(rng_state, tmp / "rng.pt"),
                 "state.json": _write_json(tmp / "state.json", trainer_state),
                 "meta.json": _write_json(tmp / "meta.json", {"step": step, "saved_at": time.time(), **(meta or {})})}
        write_marker(tmp, step, files)
        replace_dir(tmp, final)  # re-saving a step (e.g. after a rollback) swaps out the old one
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) or _is_write_failure(err):
            raise _save_failed(run_dir, step, err, _nbytes((model_state, optim_state))) from None
        raise
    return final


def remove_temporaries(run_dir: Path, keep: Path | None = None) -> list[Path]:
    """Remove what killed saves and prunes left in ``checkpoints/`` (``.step_*`` folders), except ``keep``.

    Only one trainer writes a run's checkpoints, so any such folder not being
    written right now is a leftover. Set-aside damaged checkpoints
    (``.corrupt-step_*``, ``.incomplete-step_*``) are kept.
    """
    removed = []
    root = checkpoint_root(run_dir)
    for child in sorted(root.glob(".step_*")) if root.is_dir() else []:
        if keep is None or child != keep:
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed + remove_stale_temporaries(root / "best")  # save_best's copy, killed mid-way


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) state: what a checkpoint of it needs on disk, give or take a little."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()  # a DTensor counts its global size
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _is_write_failure(err: BaseException) -> bool:
    """torch's zip writer's RuntimeError for a failed write (its OSError is gone: ENOSPC, EIO, EDQUOT)."""
    text = str(err)
    return isinstance(err, RuntimeError) and any(s in text for s in ("PytorchStreamWriter", "inline_container",
                                                                    "file write failed", "unexpected pos"))


def _root_cause(err: BaseException | None) -> BaseException | None:
    """The OSError (else first error) inside a DCP CheckpointException; ``err`` itself otherwise."""
    failures = getattr(err, "failures", None)  # torch.distributed.checkpoint.api.CheckpointException
    if failures:
        causes = [exc for exc, _ in failures.values()]
        return next((e for e in causes if isinstance(e, OSError)), causes[0])
    return err


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def _size(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _why(err: BaseException | None, free: int | None, needed: int) -> str:
    """The cause of a failed save in a few words; a full disk says how much space the checkpoint needs."""
    if err is None:
        return "failed on another rank"
    err = _root_cause(err)
    disk_full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
    # torch's writer hides the errno; a write failure with less room than the checkpoint needs is a full disk
    disk_full = disk_full or (_is_write_failure(err) and free is not None and free < needed)
    if disk_full:
        room = f", {_size(free)} free" if free is not None else ""
        return f"disk full: needs about {_size(needed)}{room}"
    if isinstance(err, OSError):
        return err.strerror or str(err)
    return (str(err).strip().splitlines() or [type(err).__name__])[-1][:200]


def _save_failed(run_dir: Path, step: int, err: BaseException | None, needed: int = 0) -> UserError:
    """The one line a failed save reports: where, why, how much room, and which checkpoint is still intact."""
    root = checkpoint_root(run_dir)
    previous = latest_checkpoint(run_dir)
    kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
    return UserError(f"saving checkpoint step {step} to {root} failed ({_why(err, _free_bytes(root), needed)}); "
                     f"{kept}; free space or fix {root}, then --resume auto")


# --------------------------------------------------------------------------- sharded (torch.distributed.checkpoint)

FORMATS = ("full", "sharded")
DCP_METADATA = ".metadata"


def checkpoint_format(path: Path) -> str:
    """'sharded' for a torch.distributed.checkpoint directory, else 'full'."""
    return "sharded" if (Path(path) / DCP_METADATA).is_file() else "full"


def resolve_format(wanted: str, world: int, expert_parallel: int = 1) -> str:
    """The format a run writes: ``auto`` is sharded under torchrun (world > 1) and full for one process.

    Expert-parallel slices are written as DTensor chunks of the full expert
    tensors (``parallel_ep.expert_state_to_dtensors``), so both formats hold them.
    """
    if wanted == "auto":
        return "sharded" if world > 1 else "full"
    return wanted


def _sharded_paths(run_dir: Path, step: int) -> tuple[Path, Path]:
    final = checkpoint_root(run_dir) / step_dir_name(step)
    # One name all ranks agree on without communicating (a pid would differ per rank).
    return final, final.parent / f".{final.name}.tmp-sharded"


def _prepare_tmp(tmp: Path, rank: int, group) -> OSError | None:
    """An empty temporary directory (rank 0 removes killed saves' leftovers); returns rank 0's error, if any.

    The other ranks wait for it: DCP creates the directory on every rank while
    planning, which must not race with rank 0's clean-up.
    """
    err = None
    if rank == 0:
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            remove_temporaries(tmp.parent.parent)
            tmp.mkdir(exist_ok=True)
        except OSError as e:
            err = e
    if not _single_process():
        import torch.distributed as dist

        dist.barrier(group=group)
    return err


def _all_ok(ok: bool, group) -> bool:
    """True only if ``ok`` on every rank (one all-reduce on the checkpoint's gloo group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return ok
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
    return bool(flag.item())


def _gather(obj: Any, group) -> list:
    """Every rank's ``obj`` on every rank (one all_gather_object on the gloo group); ``[obj]`` in one process."""
    import torch.distributed as dist

    if _single_process():
        return [obj]
    out: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def _shard_entries(tmp: Path, rank: int) -> dict[str, dict]:
    """Manifest entries of the DCP files this rank wrote (``__<rank>_*.distcp``; rank 0 adds ``.metadata``).

    Each rank checksums only its own shards, so no rank reads the whole checkpoint.
    """
    names = [p.name for p in tmp.glob(f"__{rank}_*.distcp")] + ([DCP_METADATA] if rank == 0 else [])
    return {name: file_entry(tmp / name) for name in names}


def _finish_sharded(run_dir: Path, step: int, tmp: Path, final: Path, rng_state: dict, trainer_state: dict,
                    meta: dict | None, rank: int, group, err: BaseException | None, needed: int = 0) -> Path:
    """After every rank's shards are written: rank 0 adds the small files and the manifest, marks, renames.

    Every rank first checksums its own shards (the entries go to rank 0), and all
    ranks agree at the end whether the checkpoint exists.
    """
    entries = None
    if err is None:
        try:
            entries = _shard_entries(tmp, rank)
        except OSError as e:
            err = e
    parts = _gather(entries, group)
    if rank == 0 and err is None and all(p is not None for p in parts):
        try:
            files = {name: rec for part in parts for name, rec in part.items()}
            files["rng.pt"] = _torch_save(rng_state, tmp / "rng.pt")
            files["state.json"] = _write_json(tmp / "state.json", trainer_state)
            files["meta.json"] = _write_json(tmp / "meta.json", {"step": step, "saved_at": time.time(),
                                                                 "format": "sharded", **(meta or {})})
            write_marker(tmp, step, files)
            replace_dir(tmp, final)
        except OSError as e:
            err = e
    ok = err is None and all(p is not None for p in parts)
    if rank == 0 and not ok:
        shutil.rmtree(tmp, ignore_errors=True)
    if not _all_ok(ok, group):
        raise _save_failed(run_dir, step, err, needed)
    return final


def save_sharded_checkpoint(run_dir: Path, step: int, app_state: dict, rng_state: dict, trainer_state: dict,
                            meta: dict | None = None, *, rank: int = 0, group=None) -> Path:
    """Collective: every rank writes its shards of ``app_state`` with ``dcp.save``; returns the directory.

    ``group`` is a gloo process group (CPU collectives). A failure on any rank
    removes the temporary directory, keeps every earlier checkpoint and raises the
    same one-line ``UserError`` on every rank.
    """
    import torch.distributed.checkpoint as dcp

    final, tmp = _sharded_paths(run_dir, step)
    err: BaseException | None = _prepare_tmp(tmp, rank, group)
    try:
        dcp.save(app_state, checkpoint_id=tmp, process_group=group, no_dist=_single_process())
    except (Exception, _checkpoint_exception()) as e:  # CheckpointException is a BaseException
        err = err or e
    return _finish_sharded(run_dir, step, tmp, final, rng_state, trainer_state, meta, rank, group, err,
                           _nbytes(app_state))


def _checkpoint_exception() -> type[BaseException]:
    from torch.distributed.checkpoint.api import CheckpointException

    return CheckpointException


def load_sharded_into(path: Path, state: dict, group=None, no_dist: bool = False) -> None:
    """Fill ``state`` (tensors, DTensors, nested dicts) in place from a sharded checkpoint, resharding as needed."""
    import torch.distributed.checkpoint as dcp

    dcp.load(state, checkpoint_id=Path(path), process_group=group, no_dist=no_dist or _single_process())


def _single_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized())


def _stage(obj: Any, buffer: Any = None) -> Any:
    """Deep-copy tensors to CPU so training can keep mutating the live ones during a background write.

    ``buffer`` is the previous save's staged copy: tensors of the same shape and
    dtype are reused (``copy_``), so steady-state saves allocate nothing.
    """
    import torch as _torch

    if isinstance(obj, _torch.Tensor):
        src = obj.detach()
        if isinstance(buffer, _torch.Tensor) and buffer.shape == src.shape and buffer.dtype == src.dtype:
            return buffer.copy_(src)
        return src.to("cpu", copy=True)
    if isinstance(obj, dict):
        prev = buffer if isinstance(buffer, dict) else {}
        return {k: _stage(v, prev.get(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        prev = buffer if isinstance(buffer, (list, tuple)) and len(buffer) == len(obj) else [None] * len(obj)
        return type(obj)(_stage(v, b) for v, b in zip(obj, prev))
    return obj


class AsyncCheckpointer:
    """Saves checkpoints on a background thread, overlapping even the copy to CPU with training.

    ``save`` returns at once; the thread first copies the state into reusable
    CPU buffers, then writes the files. The live tensors only change in the
    optimizer step, so the loop calls ``wait_staged()`` right before its next
    ``optimizer.step()``: the copy runs during the next forward/backward and the
    loop blocks only for whatever of it is left. One save is in flight at a
    time; the completion marker is written last, so a crash mid-write leaves
    only an invisible temporary directory. A background error is raised by the
    next ``save``, ``wait_staged`` or ``wait``.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._staged = threading.Event()
        self._staged.set()
        self._error: BaseException | None = None
        self._buffer: Any = None  # staged CPU copies, reused by the next save once this one is written
        self.last_path: Path | None = None

    def save(self, run_dir: Path, step: int, model_state: dict, optim_state: dict, rng_state: dict,
             trainer_state: dict, meta: dict | None = None, on_done=None) -> Path:
        self.wait()
        self._staged.clear()

        def work():
            try:
                try:
                    staged = self._buffer = _stage((model_state, optim_state, rng_state), self._buffer)
                finally:
                    self._staged.set()
                self.last_path = save_checkpoint(run_dir, step, *staged, trainer_state, meta)
                if on_done is not None:
                    on_done(self.last_path)
            except BaseException as err:  # surfaced on the training thread by wait()
                self._error = err

        self._thread = threading.Thread(target=work, name=f"checkpoint-{step}", daemon=False)
        self._thread.start()
        return checkpoint_root(run_dir) / step_dir_name(step)

    def wait_staged(self) -> None:
        """Block until the in-flight save has copied the state (call before mutating parameters)."""
        self._staged.wait()
        self._raise()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def close(self) -> None:
        self.wait()


class ShardedAsyncCheckpointer(AsyncCheckpointer):
    """Sharded saves with ``dcp.async_save``: same contract as ``AsyncCheckpointer``, collective on every rank.

    DCP's ``DefaultStager`` copies each rank's shard into cached CPU buffers on a
    background thread (reused by the next save); ``wait_staged`` waits for that
    copy before the optimizer step. The upload then runs on DCP's thread over
    ``group`` (a dedicated gloo group: its collectives must not interleave with
    the training loop's on the default group), and a finishing thread marks the
    checkpoint complete and agrees on success with the other ranks.
    """

    def __init__(self, rank: int = 0, group=None) -> None:
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

        super().__init__()
        self.rank, self.group = rank, group
        cuda = torch.cuda.is_available()
        self._stager = DefaultStager(StagingOptions(use_pinned_memory=cuda, use_shared_memory=False,
                                                    use_async_staging=True, use_non_blocking_copy=cuda))
        self._staging = None

    def save(self, run_dir: Path, step: int, app_state: dict, rng_state: dict, trainer_state: dict,
             meta: dict | None = None, on_done=None) -> Path:
        import torch.distributed.checkpoint as dcp

        self.wait()
        final, tmp = _sharded_paths(run_dir, step)
        prep_err: BaseException | None = _prepare_tmp(tmp, self.rank, self.group)
        needed = _nbytes(app_state)
        response = dcp.async_save(app_state, checkpoint_id=tmp, process_group=self.group, async_stager=self._stager,
                                  no_dist=_single_process())
        self._staging = response.staging_completion

        def work():
            err = prep_err
            try:
                try:
                    response.upload_completion.result()
                except (Exception, _checkpoint_exception()) as e:
                    err = err or e
                self.last_path = _finish_sharded(run_dir, step, tmp, final, rng_state, trainer_state, meta,
                                                 self.rank, self.group, err, needed)
                if on_done is not None:
                    on_done(self.last_path)
            except BaseException as e:  # surfaced on the training thread by wait()
                self._error = e

        self._thread = threading.Thread(target=work, name=f"checkpoint-{step}", daemon=False)
        self._thread.start()
        return final

    def wait_staged(self) -> None:
        if self._staging is not None:
            staging, self._staging = self._staging, None
            try:
                staging.result()
            except Exception as err:
                # The upload fails with it too: wait for this save to end so that every rank raises the one
                # failure the ranks agreed on (its UserError); the staging error itself only if nothing else did.
                self.wait()
                raise RuntimeError(f"copying checkpoint state to CPU failed: {err}") from err
        self._raise()

    def close(self) -> None:
        self.wait()
        self._stager.close()


def _link_copy(src: Path, dst: Path) -> Path:
    """Make ``dst`` an immutable copy of checkpoint ``src`` (hard links: no extra space), atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for f in sorted(src.iterdir()):
        if f.name == MARKER:
            continue
        try:
            os.link(f, tmp / f.name)
        except OSError:
            shutil.copy2(f, tmp / f.name)
    shutil.copy2(src / MARKER, tmp / MARKER)
    replace_dir(tmp, dst)
    return dst


def format_tokens(n: int) -> str:
    """1500000000 -> '1.5B', 250000 -> '250K': names for milestone checkpoints."""
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.4g}{unit}"
    return str(n)


def save_milestone(run_dir: Path, checkpoint: Path, tokens: int) -> Path:
    """An immutable copy named by tokens seen (``milestones/tokens_1.5B``); never pruned."""
    return _link_copy(checkpoint, checkpoint_root(run_dir) / "milestones" / f"tokens_{format_tokens(tokens)}")


def save_best(run_dir: Path, checkpoint: Path, val_loss: float) -> Path:
    """Point ``checkpoints/best`` at the checkpoint with the lowest validation loss so far."""
    dst = _link_copy(checkpoint, checkpoint_root(run_dir) / "best")
    atomic_write_json(dst / "best.json", {"val_loss": val_loss, "source": checkpoint.name})
    return dst


def prune_checkpoints(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` intact checkpoints, and any stale temporaries.

    A checkpoint whose files no longer have their recorded sizes is neither
    counted nor deleted: it never takes the place of a good one, and is kept
    for ``--resume auto`` to set aside and report.
    """
    removed, kept = [], 0
    for _, path in reversed(list_checkpoints(run_dir)):
        if verify(path, checksums=False) is not None:
            continue
        if kept < keep_last:
            kept += 1
            continue
        # Hide it with one rename first, so a crash mid-delete never leaves a visible partial checkpoint.
        hidden = path.parent / f".{path.name}.del-{os.getpid()}"
        os.replace(path, hidden)
        shutil.rmtree(hidden, ignore_errors=True)
        removed.append(path)
    remove_temporaries(run_dir)
    return removed[::-1]


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load every part of a complete checkpoint (``verify`` it first: this only reads).

    For a sharded checkpoint ``model`` and ``optim`` are None: they are loaded
    into a live (possibly sharded) model with ``parallel.load_sharded_state``.
    A file that cannot be read raises a one-line ``UserError`` naming it.
    """
    path = Path(path)
    if not is_complete(path):
        raise UserError(f"{path} is not a complete checkpoint (no {MARKER} marker); pick another or use --resume auto")
    fmt = checkpoint_format(path)
    full = fmt == "full"
    return {
        "format": fmt,
        "model": _read(path / "model.pt", torch.load, map_location=map_location, weights_only=True) if full else None,
        "optim": _read(path / "optim.pt", torch.load, map_location=map_location, weights_only=False) if full else None,
        "rng": _read(path / "rng.pt", torch.load, map_location="cpu", weights_only=False),
        "state": _read(path / "state.json", _load_json),
        "meta": _read(path / "meta.json", _load_json),
        "path": path,
    }


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _read(path: Path, reader, **kwargs) -> Any:
    try:
        return reader(path, **kwargs)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as err:
        why = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"checkpoint file {path} cannot be read ({why}): the checkpoint is damaged; move "
                        f"{path.parent.name} aside (e.g. to .corrupt-{path.parent.name}) and resume from an earlier one"
                        ) from None


def load_model_state(path: Path, template: dict) -> dict:
    """A checkpoint's full model state dict in either format (``template``: a model's state_dict to fill).

    Sharded checkpoints are read in this one process whatever world size wrote
    them (DCP reassembles each tensor from its slices); no process group is used.
    """
    path = Path(path)
    if checkpoint_format(path) == "full":
        return torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    state = {"model": template}
    load_sharded_into(path, state, no_dist=True)
    return state["model"]


def resolve_checkpoint(run_dir: Path, which: str | int | None = None) -> Path:
    """A run's checkpoint by step number, path, or the newest ("latest"/None)."""
    run_dir = Path(run_dir)
    if which in (None, "latest", "auto"):
        return newest_intact_checkpoint(run_dir)
    if isinstance(which, int) or str(which).isdigit():
        path = checkpoint_root(run_dir) / step_dir_name(int(which))
    else:
        path = Path(which)
    if not is_complete(path):
        raise UserError(f"checkpoint {path} does not exist or is incomplete; list {checkpoint_root(run_dir)}")
    problem = verify(path)
    if problem:
        raise UserError(f"checkpoint {path} is damaged: {problem}; pick an earlier one from {checkpoint_root(run_dir)}")
    return path


def newest_intact_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint that verifies; one printed line per newer damaged one (left in place)."""
    from pretrainlab.progress import console

    for step, path in reversed(list_checkpoints(run_dir)):
        problem = verify(path)
        if problem is None:
            return path
        console.print(f"[yellow]skipped[/] checkpoint step {step} ({path}): {problem}")
    raise UserError(f"{run_dir}: no intact checkpoint found; train first with `pretrainlab train`")


def load_model(run_dir: Path, which: str | int | None = None, device: str | torch.device = "cpu"):
    """Rebuild the model of a run from its saved config and a checkpoint.

    Returns (model in eval mode, ProjectConfig, checkpoint path).
    """
    from pretrainlab.config import load_run_config
    from pretrainlab.model.transformer import Transformer

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml); pass runs/<name> made by `pretrainlab train`")
    cfg = load_run_config(run_dir)
    path = resolve_checkpoint(run_dir, which)
    model = Transformer(cfg.model)
    template = model.state_dict()
    state = load_model_state(path, template)  # heads trained beside the model (multimodal: mm.*) are left out
    model.load_state_dict({k: v for k, v in state.items() if k in template})
    return model.to(device).eval(), cfg, path
