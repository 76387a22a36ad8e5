# The two commands a newcomer runs: `make quickstart` and `make test`.
# Each creates .venv on first use. torch is pinned to the CPU wheel 2.13.0 here;
# GPU machines install the package over their own torch (>=2.11).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup quickstart test test-fast docs clean gpu-check wheelhouse

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/pretrainlab quickstart -c configs/quickstart.yaml

test: $(STAMP)
	$(VENV)/bin/pytest

test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not slow"

# On the lent GPU machine (its python3 has torch 2.11): install wheelhouse/ offline with --no-deps over the
# image's packages, then run the GPU suite (<= 8 min) into $(GPU_OUT). Build wheelhouse/ first, here, with
# `make wheelhouse` and carry it (README "On a GPU"). GPU_PY is the image's python3, not this venv.
GPU_OUT ?= gpu-results
GPU_PY ?= python3
gpu-check:
	@if ls wheelhouse/*.whl >/dev/null 2>&1; then \
	  $(GPU_PY) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .gpu-site wheelhouse/*.whl; \
	else echo "note: no wheelhouse/ here; using the packages already installed"; fi
	PYTHONPATH=$(CURDIR)/src:$(CURDIR)/.gpu-site$${PYTHONPATH:+:$$PYTHONPATH} PYTHONUNBUFFERED=1 \
	  $(GPU_PY) benchmarks/gpu_suite.py --out $(GPU_OUT)

wheelhouse: $(STAMP)
	PY=$(PY) scripts/build_wheelhouse.sh wheelhouse

docs: $(STAMP)
	$(VENV)/bin/pretrainlab config docs --out docs/CONFIG.md

clean:
	rm -rf work
