# One command sets up and runs the main job (`make demo`), one the tests (`make test`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/convnext: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

.PHONY: setup demo test lint bench
setup: $(BIN)/convnext

demo: setup
	$(BIN)/convnext models

test: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests
