# Triton / TensorRT serving for three model families. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# Triton Model Analyzer's own virtualenv (perf/model-analyzer.txt says why)
MA_VENV ?= .venv-ma
# checkov's own virtualenv (deploy/checkov.txt says why)
CHECKOV_VENV ?= .venv-checkov
# TARGET: cpu = ONNX for Triton's ONNX Runtime backend; gpu = also TensorRT plans
TARGET ?= cpu
# SIZE: full = the sizes of the README's model table; small = tests and CI
SIZE ?= full
# DATA: synthetic = the project's own series and catalog at the seeds' sizes (the performance benchmark);
# real = MovieLens embedded by all-MiniLM-L6-v2, hourly electricity demand and four stock indices
DATA ?= synthetic
ARTIFACTS ?= artifacts
REPO ?= model_repository
# the configs make export serves: the repository's own, or the committed ones for a new repository
CONFIGS ?= $(if $(wildcard $(REPO)/*/config.pbtxt),$(REPO),model_repository)
# Production (images, compose, Kubernetes, TensorRT plans) runs NGC 26.10 (TensorRT 11.4); the local cpu target
# runs the wheel's Triton 2.51.0, the newest a registry ships (serving/README.md, Two targets, says why they differ).
TRITONSERVER_IMAGE_VERSION ?= 26.10
TRITONSERVER_IMAGE ?= nvcr.io/nvidia/tritonserver:$(TRITONSERVER_IMAGE_VERSION)-py3
TENSORRT_IMAGE ?= nvcr.io/nvidia/tensorrt:$(TRITONSERVER_IMAGE_VERSION)-py3

TEST_ROOT ?= build/test
TEST_REAL_ROOT ?= build/test-real
SOURCES := $(shell find common models export calibration repository -name '*.py' 2>/dev/null) pyproject.toml
# Your data (export/README.md, "Your data"): SERIES=prices.csv (unique_id, ds, y; .parquet too), CATALOG=items.npy (or
# .parquet with an id column), USERS=users.parquet, INPUT_SIZE / HORIZON (168 / 24), RESERVOIR_TRANSFORM=identity
# for series with values <= 0, DOCS=docs.parquet (integer id + text; .csv / .jsonl too: the search catalog),
# ENCODER=path/to/folder (a BERT-family sentence-transformers folder instead of all-MiniLM-L6-v2).
# Each changes what is trained, so each is part of the stamp's name.
SERIES ?=
DOCS ?=
ENCODER ?=
CATALOG ?=
USERS ?=
INPUT_SIZE ?=
HORIZON ?=
RESERVOIR_TRANSFORM ?=
data_flags = $(if $(SERIES),--series $(SERIES)) $(if $(CATALOG),--catalog $(CATALOG)) $(if $(USERS),--users $(USERS)) \
	$(if $(INPUT_SIZE),--input-size $(INPUT_SIZE)) $(if $(HORIZON),--horizon $(HORIZON)) \
	$(if $(RESERVOIR_TRANSFORM),--reservoir-transform $(RESERVOIR_TRANSFORM)) \
	$(if $(DOCS),--docs $(DOCS)) $(if $(ENCODER),--encoder $(ENCODER))
$(foreach f,$(SERIES) $(CATALOG) $(USERS) $(DOCS) $(ENCODER),$(if $(wildcard $(f)),,$(error $(f) does not exist (SERIES / CATALOG / USERS / DOCS / ENCODER name your files))))
data_tag = $(if $(strip $(data_flags)),-$(shell echo '$(strip $(data_flags))' | sha1sum | cut -c1-8))
STAMP := $(ARTIFACTS)/.export-$(strip $(DATA))-$(strip $(SIZE))-$(strip $(TARGET))$(data_tag).stamp
# make export builds here, beside $(REPO) on its file system, and moves the verified model folders in
STAGE = $(dir $(patsubst %/,%,$(REPO))).$(notdir $(patsubst %/,%,$(REPO))).stage
size_flag = $(if $(filter small,$(strip $(SIZE))),--small,)
data_flag = --data $(strip $(DATA))

.PHONY: help venv backend system-deps export export-stage export-small export-small-real serve rollout demo test lint clean

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

# Atomic: every stage after training writes into $(STAGE), a copy of the repository's model folders beside it;
# the last one verifies the stage (hashes, layout) and moves each model folder into $(REPO) (repository/publish.py).
# A failed or interrupted run leaves $(REPO) byte-identical, and the stage for inspection.
$(STAMP): $(SOURCES) $(shell find $(CONFIGS) -name '*.pbtxt' 2>/dev/null) $(wildcard $(CONFIGS)/*/1/model.py) $(SERIES) $(CATALOG) $(USERS) $(DOCS) \
		$(if $(ENCODER),$(shell find $(ENCODER) -type f 2>/dev/null))
	@test "$(DATA)" = synthetic -o "$(DATA)" = real || { echo "DATA must be synthetic or real, got '$(DATA)'" >&2; exit 2; }
	@rm -f $(ARTIFACTS)/.export-*.stamp  # another profile's stamp no longer describes these artifacts
	$(PY) -m repository.layout --repo $(CONFIGS) --check-layout --any-dims
	$(PY) -m models.train --out $(ARTIFACTS) $(size_flag) $(data_flag) $(data_flags)
	@# from the stage to the commit under the repository's writer lock: one writer at a time (repository/publish.py)
	$(PY) -m repository.publish --repo $(REPO) --hold -- $(MAKE) --no-print-directory export-stage CONFIGS=$(CONFIGS)
	@touch $@

# The stage steps of make export; run by it under the writer lock, not by hand.
export-stage:
	$(PY) -m repository.publish --repo $(REPO) --prepare $(STAGE) --configs-from $(CONFIGS) --artifacts $(ARTIFACTS)
	$(PY) -m export.onnx_export --artifacts $(ARTIFACTS) --repo $(STAGE)
	$(PY) -m calibration.calibrate --artifacts $(ARTIFACTS) --repo $(STAGE)
	$(PY) -m export.build_engine --artifacts $(ARTIFACTS) --repo $(STAGE) --target $(strip $(TARGET))
	$(PY) -m export.benchmark --artifacts $(ARTIFACTS) --repo $(STAGE) $(size_flag)
	$(PY) -m export.summary --artifacts $(ARTIFACTS) --repo $(STAGE)
	$(PY) -m repository.integrity --repo $(STAGE) --write --scan
	$(PY) -m repository.publish --repo $(REPO) --commit $(STAGE) --check-layout --artifacts $(ARTIFACTS)

export-small: $(VENV)/.installed ## the same pipeline at test sizes into $(TEST_ROOT)
	@$(MAKE) --no-print-directory export SIZE=small DATA=synthetic ARTIFACTS=$(TEST_ROOT)/artifacts REPO=$(TEST_ROOT)/model_repository \
		CONFIGS=model_repository

export-small-real: $(VENV)/.installed ## the real-data profile at test sizes (600 movies) into $(TEST_REAL_ROOT)
	@$(MAKE) --no-print-directory export SIZE=small DATA=real ARTIFACTS=$(TEST_REAL_ROOT)/artifacts \
		REPO=$(TEST_REAL_ROOT)/model_repository CONFIGS=model_repository

# MODEL_CONTROL=explicit: models load and unload through the restricted API afterwards (what `make rollout` needs)
MODEL_CONTROL ?= none
serve: backend export ## start the local Triton (cpu target) on 127.0.0.1 until Ctrl-C
	$(PY) -m serving.server --repo $(REPO) --model-control $(MODEL_CONTROL)

# A new version of one model, from another export (FROM: its repository), into the running server without
# downtime: written with its hashes, canary-checked through the server, then swapped (serving/rollout.py).
rollout: $(VENV)/.installed ## MODEL=<name> FROM=<export repository>: roll a new version out to the running Triton
	@test -n "$(MODEL)" -a -n "$(FROM)" || { echo "make rollout needs MODEL=<served model> FROM=<export repository>" >&2; exit 2; }
	$(PY) -m serving.rollout --model $(MODEL) --from $(FROM) --repo $(REPO) $(if $(URL),--url $(URL))

# The demo answers with real titles: its export is the real profile (MovieLens, real series) in a folder of its own,
# so that `make perf` keeps measuring the synthetic seeds' sizes in $(REPO) and neither export replaces the other.
# DATA=... on the command line, or your files (DOCS, SERIES, CATALOG, USERS), choose the demo's data instead.
DEMO_DATA = $(if $(filter command line,$(origin DATA)),$(DATA),$(if $(strip $(DOCS)$(SERIES)$(CATALOG)$(USERS)),synthetic,real))
DEMO_ROOT ?= build/demo
demo: $(VENV)/.installed backend ## export the real profile into build/demo, start Triton, call every model over gRPC and HTTP, stop
	@$(MAKE) --no-print-directory export DATA=$(DEMO_DATA) ARTIFACTS=$(DEMO_ROOT)/artifacts REPO=$(DEMO_ROOT)/model_repository
	$(PY) -m clients demo --repo $(DEMO_ROOT)/model_repository --artifacts $(DEMO_ROOT)/artifacts

system-deps: ## install the Debian packages of .ci/apt-packages.txt that are missing
	@scripts/install-system-deps.sh

test: lint system-deps backend $(MA_VENV)/.installed $(CHECKOV_VENV)/.installed export-small export-small-real ## lint, then the test suite against a real Triton (installs what it needs)
	$(PY) -m pytest -q

lint: $(VENV)/.installed ## ruff lint and format check, the import contracts of the stages (pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

clean: ## remove generated artifacts (not the virtualenv)
	rm -rf $(ARTIFACTS) build perf/results $(STAGE)
	find $(REPO) -path '*/1/*' ! -name .gitkeep ! -name model.py -delete
	rm -f $(REPO)/integrity.json

# Targets of perf/, deploy/ and reliability/ live beside their code.
-include perf/perf.mk deploy/deploy.mk reliability/reliability.mk
