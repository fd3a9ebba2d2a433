# Set-up is part of every target: `make test` and `make demo` create or reuse .venv.
# On a CUDA machine: make test TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cu130" EXTRAS=gpu,dev
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= cpu,dev,rtx
DEMO_DIR ?= out/demo
PYTEST_ARGS ?=
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),_,$(EXTRAS))

.PHONY: venv lint format test demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

demo: venv
	DEMO_DIR=$(DEMO_DIR) PY=$(PY) bash scripts/demo.sh

# The loda_b16 benchmarks of bench/ (issue 4: export/precision; issue 5: loda-score). Long:
# about 25 minutes together on a 2-core CPU (README); run them on an otherwise idle machine.
BENCH_CONFIG ?= loda_b16
bench: venv
	$(PY) bench/bench_export.py --config $(BENCH_CONFIG) --out out/bench/export
	$(PY) bench/bench_score.py --checkpoint out/bench/export/$(BENCH_CONFIG).safetensors \
		--onnx out/bench/export/$(BENCH_CONFIG).onnx --out out/bench/score

clean:
	rm -rf out build *.egg-info .pytest_cache
