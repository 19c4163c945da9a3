# Two commands on a fresh machine: `make demo` (set up + run the method on the bundled toy
# model) and `make test` (set up + run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0: on this project's machines a CPU build comes from the local disk; elsewhere pip
# fetches the default build for your platform (CUDA on Linux x86_64).
TORCH ?= torch==2.13.0

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: setup
	$(VENV)/bin/reenact demo -o reenact-demo

test: setup
	$(PY) -m pytest

bench: setup
	$(VENV)/bin/reenact bench toy --out bench-out

clean:
	rm -rf $(VENV) reenact-demo bench-out
