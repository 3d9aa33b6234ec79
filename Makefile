# One command sets up and runs the main job (`make demo`), one the tests (`make test`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/convnext: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

.PHONY: setup demo test lint gpu-check
setup: $(BIN)/convnext

# The quickstart: a ConvNeXt learns scikit-learn's handwritten digits on CPU, then is evaluated and run.
RUN := runs/quickstart_digits
demo: setup
	$(BIN)/convnext train --config quickstart_digits run.dir=$(RUN) --fresh
	$(BIN)/convnext evaluate --weights $(RUN)
	$(BIN)/convnext predict $(RUN)/samples --weights $(RUN) --topk 3 --cam $(RUN)/cam

test: setup
	$(BIN)/ruff check src tests benchmarks hubconf.py
	$(BIN)/ruff format --check src tests benchmarks hubconf.py
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check --fix src tests benchmarks hubconf.py
	$(BIN)/ruff format src tests benchmarks hubconf.py

# On a machine with a CUDA GPU: the CUDA-marked tests (mixed-precision training steps with channels_last and
# torch.compile, a 1-process NCCL run, export parity on CUDA, LayerNorm in fp32 under fp16 autocast), then
# the GPU benchmark against timm and torchvision (figures for BENCHMARKS.md).
gpu-check: setup
	$(BIN)/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'make gpu-check: torch sees no CUDA GPU here')"
	$(BIN)/pytest -q -m cuda tests/test_cuda.py
	$(BIN)/convnext benchmark --model convnext_tiny --device cuda --batch-size 256 --amp bf16 --channels-last \
	    --compare timm,torchvision --repeats 20
	$(BIN)/convnext benchmark --model convnext_tiny --device cuda --batch-size 256 --amp fp16 --channels-last \
	    --compare timm,torchvision --repeats 20
	$(BIN)/convnext benchmark --model convnext_tiny --device cuda --batch-size 128 --amp bf16 --channels-last \
	    --mode train --compare timm,torchvision --repeats 20
