# Reliability and security targets (included by the top-level Makefile). Figures go to RELIABILITY.md.
SOAK_REPO ?= $(REPO)
SOAK_ARTIFACTS ?= $(ARTIFACTS)
# Seconds of paced load and the fraction of the measured maximum it holds: auto = the highest whose scheduler
# lag stays bounded, measured by paced probes at the start of each run.
SOAK_SECONDS ?= 600
SOAK_LOAD ?= auto
RELIABILITY_OUT ?= build/reliability

.PHONY: soak soak-small faults reliability-test integrity-manifest integrity-check

soak: $(VENV)/.installed backend ## soak the cpu target at the highest load it sustains (SOAK_LOAD) for SOAK_SECONDS (600), every answer checked
	$(PY) -m reliability.soak --repo $(SOAK_REPO) --artifacts $(SOAK_ARTIFACTS) --duration $(SOAK_SECONDS) \
		--load $(SOAK_LOAD) --out $(RELIABILITY_OUT)

soak-small: export-small ## the soak over the small test repository (SOAK_SECONDS, default 600)
	$(PY) -m reliability.soak --repo $(TEST_ROOT)/model_repository --artifacts $(TEST_ROOT)/artifacts \
		--duration $(SOAK_SECONDS) --load $(SOAK_LOAD) --out $(RELIABILITY_OUT)

faults: export-small ## scripted faults under load (server killed, restarted, missing/corrupt model) -> faults.json
	$(PY) -m reliability.faults --repo $(TEST_ROOT)/model_repository --artifacts $(TEST_ROOT)/artifacts \
		--out $(RELIABILITY_OUT)

reliability-test: export-small ## only the reliability and security tests (fuzz, faults, hardening)
	$(PY) -m pytest -q tests/reliability

integrity-manifest: ## record the sha256 of every artifact of REPO in REPO/integrity.json
	$(PY) -m repository.integrity --repo $(REPO) --write

integrity-check: ## verify REPO against its hashes and scan artifacts for build-machine paths
	$(PY) -m repository.integrity --repo $(REPO) --scan
