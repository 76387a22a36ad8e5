"""Wheels for the lent GPU image: build them here (with PyPI), check that they install offline for Python 3.12.

    python scripts/wheelhouse.py build [OUT] [--extras fp8] [--limit-mb N]
    python scripts/wheelhouse.py check [WHEELHOUSE] [--python python3.12]

The GPU image (scripts/gpu_image_packages.txt) has Python 3.12, torch 2.11 and many
packages, but not pydantic, datatrove, torchao, ... and no network. ``build``
resolves the project's dependency tree for CPython 3.12 on manylinux x86-64 with
the image's packages standing in (stub wheels at the versions seen there), and
downloads the wheels of everything else plus the project's own wheel into OUT
(default ``wheelhouse/``), refusing to exceed what the device machine can carry.
It also writes ``image-assumed.txt``: the image packages the tree needs whose
version on the image nobody has read, at the version PyPI resolved here.

``check`` proves the offline install resolves: with ``--python`` naming a real
Python 3.12, a fresh venv gets the stand-ins (dist-info-only stub wheels named
torch, numpy, ...: "torch already installed") and then installs
``pretrainlab[fp8]`` with ``--no-index`` from the wheelhouse alone. Without one,
this interpreter's pip does the same resolution and install for Python 3.12
(``--python-version 3.12 --target``). On the device, ``make gpu-check`` installs
the wheelhouse with ``--no-deps`` over the real image, and the suite checks the
real versions there.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE_LIST = ROOT / "scripts" / "gpu_image_packages.txt"
CARRY_LIMIT_MB = 64  # the device tool carries at most 64 MiB: the repository and the wheelhouse together
STUB_LOCAL = "+image"  # stub versions are VERSION+image, so no real wheel can satisfy their pins
PLATFORMS = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"] + [
    f"manylinux_2_{n}_x86_64" for n in (5, 12, 17, 24, 27, 28, 31, 34, 35, 39)]
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
          *[a for p in PLATFORMS for a in ("--platform", p)]]


def norm(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_image(path: Path = IMAGE_LIST) -> dict[str, str | None]:
    """{normalized name: version seen on the image, or None} from the image's package list."""
    out: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[norm(name)] = version or None
    return out


def stub_wheel(name: str, version: str, out: Path) -> Path:
    """A wheel holding only a dist-info (no code, no requirements): an installed package's stand-in."""
    dist = f"{re.sub(r'[-.]+', '_', name)}-{version}"
    files = {f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: pretrainlab-stub\nRoot-Is-Purelib: true\n"
                                        "Tag: py3-none-any\n"}
    record = [f"{k},sha256={base64.urlsafe_b64encode(hashlib.sha256(v.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(v.encode())}" for k, v in files.items()]
    files[f"{dist}.dist-info/RECORD"] = "\n".join([*record, f"{dist}.dist-info/RECORD,,"]) + "\n"
    path = out / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for key, text in files.items():
            zf.writestr(key, text)
    return path


def write_stubs(versions: dict[str, str], out: Path) -> Path:
    """Stub wheels for ``versions`` in ``out`` and a constraints file pinning each to its stub; returns it."""
    out.mkdir(parents=True, exist_ok=True)
    pins = []
    for name, version in sorted(versions.items()):
        stub_wheel(name, version + STUB_LOCAL, out)
        pins.append(f"{name}=={version}{STUB_LOCAL}")
    constraints = out / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    return constraints


def pip(python: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [python, "-m", "pip", "--disable-pip-version-check", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(line for line in (done.stdout + done.stderr).splitlines()
                         if not line.startswith("WARNING: Location"))[-3000:]
        raise SystemExit(f"error: {' '.join(cmd[:6])} ... failed:\n{tail}")
    return done


def resolve(extras: str, stubs: Path, constraints: Path) -> list[dict]:
    """The install list (name, version, url) pip resolves for CPython 3.12 manylinux, image stand-ins included."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip(sys.executable, "install", "-q", "--dry-run", "--ignore-installed", "--report", str(report), *TARGET,
            "--target", str(Path(tmp) / "t"), "--find-links", str(stubs), "-c", str(constraints),
            f"{ROOT}[{extras}]" if extras else str(ROOT))
        items = json.loads(report.read_text())["install"]
    return [{"name": norm(i["metadata"]["name"]), "version": i["metadata"]["version"],
             "url": i["download_info"]["url"]} for i in items]


def build(out: Path, extras: str, limit_mb: float | None) -> int:
    image = read_image()
    seen = {n: v for n, v in image.items() if v}
    with tempfile.TemporaryDirectory() as tmp:
        stubs = Path(tmp) / "stubs"
        tree = resolve(extras, stubs, write_stubs(seen, stubs))
    missing = [d for d in tree if d["name"] not in image and d["name"] != "pretrainlab"]
    assumed = sorted(f"{d['name']}=={d['version']}" for d in tree if d["name"] in image and not image[d["name"]])
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    project_wheel(staging)
    pip(sys.executable, "download", "-q", "--no-deps", *TARGET, "-d", str(staging),
        *[f"{d['name']}=={d['version']}" for d in missing])
    (staging / "image-assumed.txt").write_text(
        "# Image packages this tree needs whose version on the image nobody has read: the versions PyPI gave\n"
        "# when the wheelhouse was built (benchmarks/gpu_suite.py checks the real ones on the device).\n"
        + "".join(f"{line}\n" for line in assumed))
    size = sum(f.stat().st_size for f in staging.iterdir()) / 2**20
    limit = limit_mb if limit_mb is not None else CARRY_LIMIT_MB - repo_mb() - 2
    if size > limit:
        raise SystemExit(f"error: the wheelhouse is {size:.1f} MiB, over the {limit:.1f} MiB the device machine can "
                         f"carry beside the repository; drop an extra (--extras) or raise --limit-mb")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    print(f"{out}: {len(missing) + 1} wheels, {size:.1f} MiB (limit {limit:.1f}); left to the image: "
          f"{sum(d['name'] in image for d in tree)} packages ({len(assumed)} at assumed versions, image-assumed.txt)")
    return 0


def project_wheel(out: Path) -> None:
    """The project's own wheel, built from a copy of the tree (an in-tree build/ could carry deleted modules)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (ROOT / name).is_file():
                shutil.copy2(ROOT / name, tmp)
        shutil.copytree(ROOT / "src", Path(tmp) / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        pip(sys.executable, "wheel", "-q", "--no-deps", "-w", str(out), tmp)


def repo_mb() -> float:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True).stdout.split("\0")
    return sum((ROOT / f).stat().st_size for f in files if f and (ROOT / f).is_file()) / 2**20


def image_versions(wheelhouse: Path) -> dict[str, str]:
    """Versions the stand-ins take: seen on the image, else those recorded as assumed at build time."""
    versions = {n: v for n, v in read_image().items() if v}
    assumed = wheelhouse / "image-assumed.txt"
    if assumed.is_file():
        for line in assumed.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, version = line.strip().partition("==")
                versions.setdefault(norm(name), version)
    return versions


def check(wheelhouse: Path, python: str | None, extras: str) -> int:
    """Install ``pretrainlab[extras]`` offline from ``wheelhouse`` for Python 3.12 over the image's stand-ins."""
    spec = f"pretrainlab[{extras}]" if extras else "pretrainlab"
    with tempfile.TemporaryDirectory() as tmp:
        stubs = Path(tmp) / "stubs"
        constraints = write_stubs(image_versions(wheelhouse), stubs)
        offline = ["--no-index", "--find-links", str(wheelhouse), "--no-cache-dir"]
        if python:
            venv = Path(tmp) / "venv"
            subprocess.run([python, "-m", "venv", str(venv)], check=True)
            py = str(venv / "bin" / "python")
            pip(py, "install", "-q", "--no-index", *map(str, sorted(stubs.glob("*.whl"))))  # "torch already installed"
            pip(py, "install", "-q", *offline, spec)
            shown = pip(py, "list", "--format=json").stdout
            installed = {norm(d["name"]): d["version"] for d in json.loads(shown)}
            where = f"a fresh {python} venv"
        else:
            target = Path(tmp) / "site"
            pip(sys.executable, "install", "-q", *offline, "--find-links", str(stubs), "-c", str(constraints),
                *TARGET, "--target", str(target), spec)
            installed = dict(p.name[: -len(".dist-info")].split("-", 1) for p in target.glob("*.dist-info"))
            installed = {norm(n): v for n, v in installed.items()}
            where = "a --python-version 3.12 --target install"
    real = {n: v for n, v in installed.items() if not v.endswith(STUB_LOCAL)}
    if "pretrainlab" not in real or not any(n == "pydantic-core" for n in real):
        raise SystemExit(f"error: the offline install into {where} lacks pretrainlab or pydantic-core: {sorted(real)}")
    print(f"offline install of {spec} into {where} resolved: {len(real)} packages from {wheelhouse}, "
          f"{len(installed) - len(real)} image stand-ins")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="download the wheels the GPU image lacks")
    b.add_argument("out", nargs="?", default=str(ROOT / "wheelhouse"))
    b.add_argument("--extras", default="fp8", help="the project's extras to include (comma-separated)")
    b.add_argument("--limit-mb", type=float, default=None, help="default: 64 MiB less the repository, less 2")
    c = sub.add_parser("check", help="install from the wheelhouse offline for Python 3.12")
    c.add_argument("wheelhouse", nargs="?", default=str(ROOT / "wheelhouse"))
    c.add_argument("--python", default=None, help="a Python 3.12 to make a venv with (default: cross-install)")
    c.add_argument("--extras", default="fp8")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        return build(Path(args.out).resolve(), args.extras, args.limit_mb)
    wheelhouse = Path(args.wheelhouse).resolve()
    if not any(wheelhouse.glob("pretrainlab-*.whl")):
        raise SystemExit(f"error: {wheelhouse} holds no pretrainlab wheel; run scripts/build_wheelhouse.sh first")
    return check(wheelhouse, args.python, args.extras)


if __name__ == "__main__":
    sys.exit(main())
