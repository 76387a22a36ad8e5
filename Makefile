# The two commands a newcomer runs: `make quickstart` and `make test`.
# Each creates .venv on first use. torch is pinned to the CPU wheel 2.13.0 here;
# GPU machines install the package over their own torch (>=2.11).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup quickstart test test-fast docs clean

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

docs: $(STAMP)
	$(VENV)/bin/pretrainlab config docs --out docs/CONFIG.md

clean:
	rm -rf work
