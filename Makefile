# One command sets up and runs the main job (`make demo`), one the tests (`make test`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/convnext: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

.PHONY: setup demo test lint
setup: $(BIN)/convnext

# The quickstart: a ConvNeXt learns scikit-learn's handwritten digits on CPU, then is evaluated and run.
RUN := runs/quickstart_digits
demo: setup
	$(BIN)/convnext train --config configs/quickstart_digits.yaml run.dir=$(RUN) --fresh
	$(BIN)/convnext evaluate --weights $(RUN)
	$(BIN)/convnext predict $(RUN)/samples --weights $(RUN) --topk 3 --cam $(RUN)/cam

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks
