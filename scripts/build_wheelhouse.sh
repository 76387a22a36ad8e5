#!/usr/bin/env bash
# Download, on a machine with PyPI, the Python 3.12 wheels the lent GPU image lacks (not torch, not what the
# image has: scripts/gpu_image_packages.txt) plus the project's own wheel, into wheelhouse/ (or $1).
# Then carry it to the GPU machine (device tool: carry ["wheelhouse"]) and run `make gpu-check` there, which
# installs it offline with --no-deps over the image's torch. scripts/wheelhouse.py says how it works.
#   scripts/build_wheelhouse.sh [OUT] [--extras fp8] [--limit-mb N]
#   PYTHON=python3.12 scripts/build_wheelhouse.sh --check   # then prove the offline install resolves
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if [ "${1:-}" = "--check" ]; then
  shift
  exec "$PY" scripts/wheelhouse.py check "$@" ${PYTHON:+--python "$PYTHON"}
fi
exec "$PY" scripts/wheelhouse.py build "$@"
