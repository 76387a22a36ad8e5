"""Code and host provenance recorded in run metadata and stage manifests."""

from __future__ import annotations

import platform
import socket
import subprocess
import time
from pathlib import Path

import torch

import pretrainlab


def _git(*args: str) -> str | None:
    repo = Path(pretrainlab.__file__).resolve().parent
    try:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version() -> dict:
    """Package version plus git sha and dirty flag when running from a checkout."""
    sha = _git("rev-parse", "HEAD")
    dirty = None
    if sha is not None:
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = bool(status) if status is not None else None
    return {"version": pretrainlab.__version__, "git_sha": sha, "git_dirty": dirty}


def host_info() -> dict:
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "time": time.time(),
    }
