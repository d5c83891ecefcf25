# perf/: perf_analyzer load tests, same-run baselines, config search, report, regression gate.
# Included by the top-level Makefile (PY, REPO, ARTIFACTS, TEST_ROOT come from there).
PERF_DEPS ?= system-deps export   # `make perf PERF_DEPS=` measures what is already exported
PERF_ARGS ?=                      # e.g. --models nhits,similarity  or  --quick
BUDGET_MS ?= 10                   # p99 budget of the chosen point and of the config search
SEARCH_ARGS ?=                    # e.g. --models nhits,similarity --concurrency 1,16 (search space: perf/search.yaml)
APPLY ?=                          # APPLY=1: perf-search writes each winner into configs/cpu.pbtxt

.PHONY: perf perf-small perf-search perf-report perf-gate perf-baseline

perf: $(PERF_DEPS) ## perf_analyzer scenarios + baselines on a local Triton -> perf/results/, perf/report.md (~15 min)
	$(PY) -m perf.run --repo $(REPO) --artifacts $(ARTIFACTS) --budget-ms $(strip $(BUDGET_MS)) $(PERF_ARGS)

perf-small: system-deps export-small ## the same, quick profile, on the small test repository (~3 min)
	$(PY) -m perf.run --repo $(TEST_ROOT)/model_repository --artifacts $(TEST_ROOT)/artifacts --quick $(PERF_ARGS)

# Triton Model Analyzer in its own virtualenv (perf/model-analyzer.txt says why)
$(MA_VENV)/.installed: perf/model-analyzer.txt
	@test -x $(MA_VENV)/bin/python || $(PYTHON) -m venv $(MA_VENV)
	$(MA_VENV)/bin/python -m pip install -q -r perf/model-analyzer.txt
	@touch $@

perf-search: system-deps backend $(MA_VENV)/.installed ## Model Analyzer searches the cpu configs under a p99 budget (APPLY=1 writes the winners)
	MA_VENV=$(MA_VENV) $(PY) -m perf.model_analyzer --repo $(REPO) --artifacts $(ARTIFACTS) --budget-ms $(strip $(BUDGET_MS)) $(if $(strip $(APPLY)),--apply,) $(SEARCH_ARGS)

perf-report: ## rebuild perf/report.md and every figure (and the config-search section) from perf/results, no measuring
	$(PY) -m perf.report

perf-gate: ## fail when a ratio of the latest run fell below perf/baseline.json by more than its tolerance
	$(PY) -m perf.gate

perf-baseline: ## write the latest full run's ratios into perf/baseline.json (commit it)
	$(PY) -m perf.gate --update
