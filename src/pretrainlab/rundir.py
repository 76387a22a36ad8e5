"""A run directory as the stages after training read it: its config, its checkpoints, its model.

`pretrainlab train` writes ``runs/<name>/`` (config.yaml, checkpoints/step_*/,
metrics, events). eval, the checkpoint sweep, the harness, export and `mm eval`
all start the same way: check the folder is a run (``open_run``, which also
loads the saved config with --set overrides), pick the device the config asks
for (``run_device``), then load a checkpoint's model with its step and token
count (``load_checkpoint``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pretrainlab.config import ProjectConfig, load_run_config
from pretrainlab.errors import UserError
from pretrainlab.train.checkpoint import list_checkpoints, load_model, resolve_checkpoint

__all__ = ["LoadedCheckpoint", "check_run_dir", "checkpoint_info", "list_checkpoints", "load_checkpoint", "open_run",
           "resolve_checkpoint", "run_device"]


def check_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` as a Path, or a UserError saying why it is not a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UserError(f"run directory not found: {run_dir}; pass runs/<name> made by `pretrainlab train`")
    if not run_dir.is_dir() or not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml); pass runs/<name> made by `pretrainlab train`")
    return run_dir


def open_run(run_dir: str | Path, overrides: list[str] | None = None) -> tuple[Path, ProjectConfig]:
    """(run folder, its saved config with ``overrides`` applied) after checking it is a run."""
    run_dir = check_run_dir(run_dir)
    return run_dir, load_run_config(run_dir, overrides or None)


def run_device(cfg: ProjectConfig) -> torch.device:
    """The device ``train.device`` asks for (auto: cuda when available)."""
    want = cfg.train.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("train.device is 'cuda' but no CUDA device is available; pass --set train.device=cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def checkpoint_info(path: Path) -> tuple[int | None, int | None]:
    """(step, tokens seen) from a checkpoint's meta.json / state.json (step from its folder name as a fallback)."""
    step = tokens = None
    for name in ("meta.json", "state.json"):
        try:
            data = json.loads((Path(path) / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            step = step if step is not None else data.get("step")
            tokens = tokens if tokens is not None else data.get("tokens", data.get("tokens_seen"))
    name = Path(path).name
    if step is None and name.startswith("step_") and name[5:].isdigit():
        step = int(name[5:])
    return (int(step) if step is not None else None), (int(tokens) if tokens is not None else None)


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module  # in eval mode, on the requested device
    path: Path
    step: int | None
    tokens: int | None


def load_checkpoint(run_dir: str | Path, which: str | int | None = None,
                    device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """A run's model from a checkpoint (step number, path, or None for the newest complete one)."""
    model, _, path = load_model(Path(run_dir), which, device)
    step, tokens = checkpoint_info(path)
    return LoadedCheckpoint(model, path, step, tokens)
