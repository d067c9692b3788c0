# Two entry points (see README): `make demo` trains the default model on the embedded data; `make test` runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

# The demo installs the runtime dependencies only; the tests add pytest, ruff, and PyTorch + transformers
# (the reference for the language model's logits; pinned to a CPU build in requirements-test.txt).
$(BIN)/brainjax: pyproject.toml requirements-test.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e . -c requirements-test.txt
	touch $(BIN)/brainjax

$(VENV)/.test-deps: $(BIN)/brainjax
	$(BIN)/pip install -q -e ".[test]" -c requirements-test.txt
	touch $(VENV)/.test-deps

.PHONY: demo test test-fast
demo: $(BIN)/brainjax
	$(BIN)/brainjax pretrain

test: $(VENV)/.test-deps
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

# the fast loop: every module, without the end-to-end training / CLI / subprocess tests marked slow
test-fast: $(VENV)/.test-deps
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow" tests
