# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv itself.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
# Keras runs on the torch backend here (TensorFlow is not installed).
export KERAS_BACKEND := torch

.PHONY: demo test bench lint clean

$(PY):
	python3 -m venv $(VENV)

# NumPy only: the demo needs no framework.
$(VENV)/.demo-installed: pyproject.toml | $(PY)
	$(PIP) -e '.[demo]'
	touch $@

# torch/torchvision are pinned (pyproject) to the wheels on this machine's disk.
$(VENV)/.test-installed: pyproject.toml | $(PY)
	$(PIP) -e '.[test]'
	touch $@

demo: $(VENV)/.demo-installed
	$(VENV)/bin/eventhooks demo

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy eventhooks adapters

test: lint
	$(VENV)/bin/pytest

bench: $(VENV)/.test-installed
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
