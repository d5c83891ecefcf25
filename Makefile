# Triton / TensorRT serving for three model families. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# Triton Model Analyzer's own virtualenv (perf/model-analyzer.txt says why)
MA_VENV ?= .venv-ma
# TARGET: cpu = ONNX for Triton's ONNX Runtime backend; gpu = also TensorRT plans
TARGET ?= cpu
# SIZE: full = the sizes of DESIGN.md; small = tests and CI
SIZE ?= full
# DATA: synthetic = the project's own series and catalog at the seeds' sizes (the performance benchmark);
# real = MovieLens embedded by all-MiniLM-L6-v2, hourly electricity demand and four stock indices
DATA ?= synthetic
ARTIFACTS ?= artifacts
REPO ?= model_repository
# Versions move together (DESIGN.md): server 2.51.0 = NGC 24.10 = TensorRT 10.5.
TRITONSERVER_IMAGE_VERSION ?= 24.10
TRITONSERVER_IMAGE ?= nvcr.io/nvidia/tritonserver:$(TRITONSERVER_IMAGE_VERSION)-py3
TENSORRT_IMAGE ?= nvcr.io/nvidia/tensorrt:$(TRITONSERVER_IMAGE_VERSION)-py3

TEST_ROOT ?= build/test
TEST_REAL_ROOT ?= build/test-real
SOURCES := $(shell find models export calibration -name '*.py' 2>/dev/null) pyproject.toml
STAMP := $(ARTIFACTS)/.export-$(strip $(DATA))-$(strip $(SIZE))-$(strip $(TARGET)).stamp
size_flag = $(if $(filter small,$(strip $(SIZE))),--small,)
data_flag = --data $(strip $(DATA))

.PHONY: help venv backend system-deps export export-small export-small-real serve demo test lint clean

help: ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and exactly: any other torch requirement pulls gigabytes of CUDA packages
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,reservoirpy,neuralforecast]'
	@touch $@

venv: $(VENV)/.installed ## create the virtualenv with the pinned dependencies

# Triton's ONNX Runtime backend (r24.10), CPU only, against the venv's onnxruntime wheel: ~30 s, then a no-op
# until the onnxruntime version or the sources change (serving/ort_backend.py; log in build/triton-backends/).
backend: system-deps $(VENV)/.installed ## build Triton's ONNX Runtime backend from source (cpu target)
	$(PY) -m serving.ort_backend

export: $(VENV)/.installed backend ## train, export ONNX, calibrate INT8, build TensorRT plans (TARGET=gpu), report
	@$(MAKE) --no-print-directory $(STAMP)

$(STAMP): $(SOURCES)
	@test "$(DATA)" = synthetic -o "$(DATA)" = real || { echo "DATA must be synthetic or real, got '$(DATA)'" >&2; exit 2; }
	@rm -f $(ARTIFACTS)/.export-*.stamp  # another profile's stamp no longer describes these artifacts
	$(PY) -m serving.repository --repo $(REPO) --check-layout
	$(PY) -m models.train --out $(ARTIFACTS) $(size_flag) $(data_flag)
	$(PY) -m export.onnx_export --artifacts $(ARTIFACTS) --repo $(REPO)
	$(PY) -m calibration.calibrate --artifacts $(ARTIFACTS) --repo $(REPO)
	$(PY) -m export.build_engine --artifacts $(ARTIFACTS) --repo $(REPO) --target $(strip $(TARGET))
	$(PY) -m export.benchmark --artifacts $(ARTIFACTS) --repo $(REPO) $(size_flag)
	$(PY) -m export.summary --artifacts $(ARTIFACTS) --repo $(REPO)
	$(PY) -m serving.integrity --repo $(REPO) --write --scan
	@touch $@

export-small: $(VENV)/.installed ## the same pipeline at test sizes into $(TEST_ROOT)
	$(PY) -m serving.repository --repo model_repository --copy-configs-to $(TEST_ROOT)/model_repository
	@$(MAKE) --no-print-directory export SIZE=small DATA=synthetic ARTIFACTS=$(TEST_ROOT)/artifacts REPO=$(TEST_ROOT)/model_repository

export-small-real: $(VENV)/.installed ## the real-data profile at test sizes (600 movies) into $(TEST_REAL_ROOT)
	$(PY) -m serving.repository --repo model_repository --copy-configs-to $(TEST_REAL_ROOT)/model_repository
	@$(MAKE) --no-print-directory export SIZE=small DATA=real ARTIFACTS=$(TEST_REAL_ROOT)/artifacts REPO=$(TEST_REAL_ROOT)/model_repository

serve: backend export ## start the local Triton (cpu target) on 127.0.0.1 until Ctrl-C
	$(PY) -m serving.server --repo $(REPO)

demo: backend export ## start Triton, call every model and ensemble over gRPC and HTTP, stop (DATA=real: MovieLens search)
	$(PY) -m clients demo --repo $(REPO) --artifacts $(ARTIFACTS)

system-deps: ## install the Debian packages of .ci/apt-packages.txt that are missing
	@scripts/install-system-deps.sh

test: system-deps backend $(MA_VENV)/.installed export-small export-small-real ## run the test suite against a real Triton (installs what it needs)
	$(PY) -m pytest -q

lint: $(VENV)/.installed ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean: ## remove generated artifacts (not the virtualenv)
	rm -rf $(ARTIFACTS) build perf/results
	find $(REPO) -path '*/1/*' ! -name .gitkeep ! -name model.py -delete
	rm -f $(REPO)/integrity.json

# Targets of perf/, deploy/ and reliability/ live beside their code.
-include perf/perf.mk deploy/deploy.mk reliability/reliability.mk
