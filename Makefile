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
	$(BIN)/pip install -q -e ".[test,reference]" -c requirements-test.txt
	touch $(VENV)/.test-deps

# Current JAX: the newest jax / flax / orbax / grain on Python 3.12 (the image's pyenv), no constraints, without
# the PyTorch references (no CPU wheel for 3.12 here: their parity tests skip in this environment only).
PY_CURRENT ?= env PYENV_VERSION=3.12.1 python3.12
CURRENT := .venv-current
$(CURRENT)/.deps: pyproject.toml
	$(PY_CURRENT) -m venv $(CURRENT)
	$(CURRENT)/bin/pip install -q --upgrade pip
	$(CURRENT)/bin/pip install -q -e ".[test]"
	touch $(CURRENT)/.deps

.PHONY: demo test test-fast test-current test-current-fast
demo: $(BIN)/brainjax
	$(BIN)/brainjax pretrain

test: $(VENV)/.test-deps
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

# the fast loop: every module, without the end-to-end training / CLI / subprocess tests marked slow
test-fast: $(VENV)/.test-deps
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow" tests

# the suite again on Python 3.12 with the current JAX release (CI runs it after make test; see README)
test-current: $(CURRENT)/.deps
	$(CURRENT)/bin/python -m pytest -q -n 2 --dist loadfile tests

test-current-fast: $(CURRENT)/.deps
	$(CURRENT)/bin/python -m pytest -q -n 2 --dist loadfile -m "not slow" tests
