"""The wheelhouse for the lent GPU image: Python 3.12 wheels of what the image lacks, installable offline.

scripts/build_wheelhouse.sh downloads them (PyPI); the GPU machine has no network,
so the project must install from them alone over the image's own torch.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "scripts" / "wheelhouse.py")
wheelhouse = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wheelhouse)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wh") / "wheelhouse"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "build_wheelhouse.sh"), str(out)],
                          capture_output=True, text=True, env={**os.environ, "PY": sys.executable})
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_the_image_list_names_torch_at_the_version_seen_there():
    image = wheelhouse.read_image()
    assert image["torch"] == "2.11.0" and image["huggingface-hub"] == "1.33.0"
    assert "pydantic" not in image and "datatrove" not in image and "torchao" not in image


def test_a_stub_wheel_stands_in_for_an_installed_package(tmp_path):
    path = wheelhouse.stub_wheel("torch", "2.11.0+image", tmp_path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert all(n.startswith("torch-2.11.0+image.dist-info/") for n in names)  # no code: only "installed"
        assert "Version: 2.11.0+image" in zf.read("torch-2.11.0+image.dist-info/METADATA").decode()


@pytest.mark.slow
def test_the_wheelhouse_holds_what_the_image_lacks_and_fits_the_carry_limit(built):
    names = {wheelhouse.norm(p.name.split("-")[0]) for p in built.glob("*.whl")}
    assert {"pretrainlab", "pydantic", "pydantic-core", "datatrove", "torchao"} <= names
    assert not names & {"torch", "numpy", "pyyaml", "rich", "tokenizers", "sentencepiece", "pyarrow"}
    assert not any(n.startswith("nvidia-") for n in names)
    assert all(("cp312" in p.name or "abi3" in p.name or "py3" in p.name or "py312" in p.name)
               for p in built.glob("*.whl"))
    size_mb = sum(p.stat().st_size for p in built.iterdir()) / 2**20
    assert size_mb + wheelhouse.repo_mb() <= wheelhouse.CARRY_LIMIT_MB


def find_python312() -> str | None:
    """A working Python 3.12: on PATH (a pyenv shim may refuse to run it), else one of pyenv's versions."""
    candidates = [shutil.which("python3.12"), *sorted(map(str, Path.home().glob(".pyenv/versions/3.12*/bin/python3.12")))]
    for exe in filter(None, candidates):
        probe = subprocess.run([exe, "-c", "import sys, venv; print(sys.version_info[:2])"], capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 12)":
            return exe
    return None


@pytest.mark.slow
def test_the_project_installs_offline_for_python_3_12_over_the_images_torch(built, capsys):
    """A fresh Python 3.12 venv where one exists, else this pip installing for 3.12 (--python-version --target).

    Stub distributions (a dist-info each, no code) stand in for the image's torch 2.11 and its other packages,
    so this proves the offline install resolves from the wheelhouse alone; importing needs the real image.
    """
    python = find_python312()
    assert wheelhouse.check(built, python, "fp8") == 0
    out = capsys.readouterr().out
    assert "resolved" in out and ("venv" in out if python else "--target" in out)
