# Two entry points (see README): `make demo` trains the default model on the embedded data; `make test` runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/brainjax: pyproject.toml requirements-test.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]" -c requirements-test.txt
	touch $(BIN)/brainjax

.PHONY: demo test
demo: $(BIN)/brainjax
	$(BIN)/brainjax pretrain

test: $(BIN)/brainjax
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests
