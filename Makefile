# Fresh machine: `make search` (set up, then a DARTS search on the embedded dataset) and
# `make test` (set up, then the test suite). Both are idempotent.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup search test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch/torchvision first: on this kind of machine these exact releases lie on local disk
	$(BIN)/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/python -m pip install --quiet "torch<=2.14.1" "torchvision<=0.29.1"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

search: setup
	$(BIN)/oneshot search

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
