# The two commands of the README: `make book` and `make test`. Each sets up .venv on its own.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Optional: a PyTorch wheel index for a GPU build, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cu126
TORCH_INDEX ?=
NBVAL  := --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-current-env

.PHONY: setup book test unit nbval bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install -q torch==2.13.0 --index-url $(TORCH_INDEX),)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

book: setup
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	@echo "Open _build/html/index.html in a browser."

test: unit nbval

unit: setup
	$(BIN)/python -m pytest tests -q

nbval: setup
	$(BIN)/python -m pytest $(NBVAL) book -q

clean:
	rm -rf _build
