# Quick start: `make demo` and `make test` work on a fresh machine; they install what is missing.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# pytest options, e.g. `make test PYTEST_ARGS="-k tiling"`
PYTEST_ARGS ?=

.PHONY: all setup sysdeps test test-core demo bench clean

all: test

sysdeps:
	@bash scripts/install-system-deps.sh

# torch is pinned here (a CPU build is provided locally); pyproject only asks for torch>=2.6 so that
# users keep their own CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[testing]"
	touch $(STAMP)

setup: sysdeps $(STAMP)

test: setup
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest $(PYTEST_ARGS)

test-core: $(STAMP)
	$(PY) -m pytest tests/core $(PYTEST_ARGS)

demo: setup
	@if [ -n "$$DISPLAY" ]; then $(PY) scripts/demo.py; else $(PY) scripts/demo.py --headless --out demo-output; fi

bench: setup
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info demo-output .pytest_cache
