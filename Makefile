# Fresh machine: `make search` (set up, then a DARTS search on the embedded dataset) and
# `make test` (set up, then the test suite). Both are idempotent.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `pip install` compiles csrc/ into ops/kernels/_C*.so: set up again when a kernel source (or a
# folder of them, for added and removed files) or the build script changes.
KERNEL_SOURCES := $(shell find csrc 2>/dev/null)
export MAX_JOBS ?= 2

.PHONY: setup search test clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py $(KERNEL_SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch/torchvision first: on this kind of machine these exact releases lie on local disk
	$(BIN)/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/python -m pip install --quiet "torch<=2.14.1" "torchvision<=0.29.1"
	# the build tools, into the venv: --no-build-isolation below builds with the venv's own
	$(BIN)/python -m pip install --quiet setuptools wheel ninja || $(BIN)/python -m pip install --quiet setuptools wheel
	# --no-build-isolation: compile the kernels against the torch above, not a second one
	$(BIN)/python -m pip install --quiet --no-build-isolation -e ".[dev]"
	touch $(STAMP)

search: setup
	$(BIN)/oneshot search

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs build dist ops/kernels/_C.*so
