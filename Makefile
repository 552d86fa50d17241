# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv itself.
SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV   := .venv
PY     := $(VENV)/bin/python
# This machine's pip config lists local indexes that do not exist for every package; pip says
# so once per package. Those lines are noise: keep everything else.
# constraints.txt holds torch and torchvision at the wheels on this machine's disk: every install
# passes it, so no package (lightning, transformers, accelerate, ignite...) can pull another torch.
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
QUIET  := 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
# Keras runs on the torch backend here (TensorFlow is not installed).
export KERAS_BACKEND := torch

.PHONY: demo test bench lint clean

$(PY):
	python3 -m venv $(VENV)

# NumPy only: the demo needs no framework.
$(VENV)/.demo-installed: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e '.[demo]' $(QUIET)
	touch $@

# torch/torchvision are pinned (pyproject, and held by constraints.txt) to the wheels on this
# machine's disk. The test extra includes bench: Lightning, transformers, Ignite, psygnal.
$(VENV)/.test-installed: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e '.[test]' $(QUIET)
	touch $@

demo: $(VENV)/.demo-installed
	$(VENV)/bin/eventhooks demo

# eventhooks/adapters is a symlink to adapters/: mypy checks the adapters under the name they
# are imported by, as it sees it on disk (it cannot see the editable install's import hook).
lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict eventhooks tests benchmarks

test: lint
	$(VENV)/bin/pytest

bench: $(VENV)/.test-installed
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
