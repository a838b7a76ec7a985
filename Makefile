# The two commands of the README: `make demo` (main job on the embedded data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= demo
# Notebooks run at once by `make demo` (anomalyseg run-all --jobs): 2 for the two cores it targets.
JOBS ?= 2
# Two pytest workers on CI's two cores; notebooks and training tests dominate the wall time. loadfile keeps
# a file's tests on one worker, so module fixtures (the tiny pipeline run of test_notebooks) run once.
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=15

.PHONY: install demo test test-fast bench clean-results

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (anomalyseg)" >/dev/null
	touch $@

demo: install
	$(VENV)/bin/anomalyseg run-all --preset $(PRESET) --jobs $(JOBS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/bench_metrics.py
