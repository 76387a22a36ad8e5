"""Checkpoints: one directory per step, valid only once its completion marker exists.

Layout of ``<run>/checkpoints/step_00000100/``::

    model.pt      model state dict (fp32 master weights)
    optim.pt      optimizer state dict
    rng.pt        torch / numpy / python RNG states
    state.json    trainer state: step, tokens seen, data-loader state, ...
    meta.json     step, tokens, wall time, config hash (for humans and tools)
    COMPLETE      marker, written last

Everything is written into a hidden temporary directory, fsynced, marked
complete, then renamed into place, so a kill -9 at any instant leaves either no
new checkpoint or a whole one; ``latest_checkpoint`` ignores anything unmarked.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import torch

from pretrainlab.errors import UserError
from pretrainlab.fsio import atomic_write_json, replace_dir

MARKER = "COMPLETE"
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


def _torch_save(obj: Any, path: Path) -> None:
    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


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

    A failed write (disk full, permission, I/O error) removes the partial
    temporary directory, leaves every earlier checkpoint untouched and raises a
    one-line ``UserError`` naming the newest intact checkpoint.
    """
    root = checkpoint_root(run_dir)
    final = root / step_dir_name(step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _torch_save(model_state, tmp / "model.pt")
        _torch_save(optim_state, tmp / "optim.pt")
        _torch_save(rng_state, tmp / "rng.pt")
        atomic_write_json(tmp / "state.json", trainer_state)
        atomic_write_json(tmp / "meta.json", {"step": step, "saved_at": time.time(), **(meta or {})})
        atomic_write_json(tmp / MARKER, {"step": step})
        replace_dir(tmp, final)  # re-saving a step (e.g. after a rollback) swaps out the old one
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(run_dir)
        why = "disk full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise UserError(
            f"saving checkpoint step {step} failed ({why}); {kept}; free space or fix {root}, then --resume auto"
        ) from None
    return final


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
    """Delete all but the newest ``keep_last`` complete checkpoints and any stale temporaries."""
    removed = []
    ckpts = list_checkpoints(run_dir)
    for _, path in ckpts[: max(0, len(ckpts) - keep_last)]:
        # Hide it with one rename first, so a crash mid-delete never leaves a visible partial checkpoint.
        hidden = path.parent / f".{path.name}.del-{os.getpid()}"
        os.replace(path, hidden)
        shutil.rmtree(hidden, ignore_errors=True)
        removed.append(path)
    root = checkpoint_root(run_dir)
    for child in root.glob(".step_*"):
        shutil.rmtree(child, ignore_errors=True)
    return removed


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load every part of a complete checkpoint."""
    path = Path(path)
    if not is_complete(path):
        raise UserError(f"{path} is not a complete checkpoint (no {MARKER} marker); pick another or use --resume auto")
    return {
        "model": torch.load(path / "model.pt", map_location=map_location, weights_only=True),
        "optim": torch.load(path / "optim.pt", map_location=map_location, weights_only=False),
        "rng": torch.load(path / "rng.pt", map_location="cpu", weights_only=False),
        "state": json.loads((path / "state.json").read_text()),
        "meta": json.loads((path / "meta.json").read_text()),
        "path": path,
    }


def resolve_checkpoint(run_dir: Path, which: str | int | None = None) -> Path:
    """A run's checkpoint by step number, path, or the newest ("latest"/None)."""
    run_dir = Path(run_dir)
    if which in (None, "latest", "auto"):
        path = latest_checkpoint(run_dir)
        if path is None:
            raise UserError(f"{run_dir}: no complete checkpoint found; train first with `pretrainlab train`")
        return path
    if isinstance(which, int) or str(which).isdigit():
        path = checkpoint_root(run_dir) / step_dir_name(int(which))
    else:
        path = Path(which)
    if not is_complete(path):
        raise UserError(f"checkpoint {path} does not exist or is incomplete; list {checkpoint_root(run_dir)}")
    return path


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
    state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg, path
