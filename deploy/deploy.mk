# Deployment targets: images, compose, Kubernetes, the perf smoke run and the deployment checks.
# Included by the Makefile, whose TRITONSERVER_IMAGE_VERSION / TRITONSERVER_IMAGE / TENSORRT_IMAGE
# are the only place image versions are set; everything below derives from them.

DOCKER ?= docker
KUBECTL ?= kubectl
SERVER_IMAGE ?= triton-latency-models/server:$(TRITONSERVER_IMAGE_VERSION)
EXPORT_IMAGE ?= triton-latency-models/export:$(TRITONSERVER_IMAGE_VERSION)
TRITONSERVER_SDK_IMAGE ?= $(TRITONSERVER_IMAGE)-sdk
K8S_OVERLAY ?= gpu
SMOKE_CONTAINER ?= triton-latency-models-smoke
# perf_analyzer from the SDK image of the same release; PERF_ANALYZER=.venv/bin/perf_analyzer (2.51) works too
PERF_ANALYZER ?= $(DOCKER) run --rm --network host --user $$(id -u):$$(id -g) -v $(CURDIR):$(CURDIR) -w $(CURDIR) \
	$(TRITONSERVER_SDK_IMAGE) perf_analyzer
PERF_URL ?= localhost:8001
PERF_MODELS ?= nhits reservoir similarity forecast recommend
PERF_SMOKE_DIR ?= perf/results/smoke
COMPOSE = TRITONSERVER_IMAGE=$(TRITONSERVER_IMAGE) SERVER_IMAGE=$(SERVER_IMAGE) $(DOCKER) compose -f docker/compose.yaml
# The hardening compose and Kubernetes apply, for `docker run` (docker-run, gpu-smoke): not root, a read-only root
# file system with /tmp as tmpfs, no capabilities, no privilege escalation, ports on loopback only.
HARDENED = --user 1000:1000 --read-only --tmpfs /tmp:size=1g --cap-drop ALL --security-opt no-new-privileges:true


$(CHECKOV_VENV)/.installed: deploy/checkov.txt
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q -r deploy/checkov.txt
	@touch $@

.PHONY: export-image docker-export gpu-check docker-build docker-run compose-up compose-down k8s-render k8s-apply perf-smoke gpu-smoke gpu-perf check-deploy

export-image: ## build the export image (EXPORT_IMAGE) on NVIDIA's TensorRT image (TENSORRT_IMAGE)
	$(DOCKER) build -f docker/Dockerfile.export --build-arg TENSORRT_IMAGE=$(TENSORRT_IMAGE) -t $(EXPORT_IMAGE) .

docker-export: export-image ## make export TARGET=gpu inside the TensorRT container, on a GPU (plans land in REPO)
	$(DOCKER) run --gpus all --rm --user $$(id -u):$$(id -g) -e HOME=/tmp \
		-v $(CURDIR):/workspace/project -w /workspace/project $(EXPORT_IMAGE) \
		make -o /opt/venv/.installed export TARGET=gpu VENV=/opt/venv SIZE=$(strip $(SIZE))

gpu-check: ## in the TensorRT container, on the GPU: trtexec loads every plan, Polygraphy compares it with ONNX Runtime
	$(DOCKER) run --gpus all --rm --user $$(id -u):$$(id -g) -e HOME=/tmp \
		-v $(CURDIR):/workspace/project -w /workspace/project $(EXPORT_IMAGE) \
		/opt/venv/bin/python -m export.check_plans --repo $(REPO)

docker-build: ## build the serving image (SERVER_IMAGE) with the exported REPO baked in
	@find $(REPO) -path '*/1/*' \( -name '*.plan' -o -name '*.onnx' \) | grep -q . || \
		{ echo "$(REPO) holds no exported model: run 'make docker-export' (gpu) or 'make export' (cpu) first" >&2; exit 1; }
	$(DOCKER) build -f docker/Dockerfile --build-arg TRITONSERVER_IMAGE=$(TRITONSERVER_IMAGE) -t $(SERVER_IMAGE) .

docker-run: ## run the serving image on one GPU in the foreground, key from TRITON_ADMIN_KEY (ARGS=--model-config-name=cpu: cpu target)
	$(DOCKER) run --rm $(if $(filter --model-config-name=cpu,$(ARGS)),,--gpus 1) --shm-size=1g $(HARDENED) \
		-e TRITON_ADMIN_KEY -p 127.0.0.1:8000:8000 -p 127.0.0.1:8001:8001 -p 127.0.0.1:8002:8002 $(SERVER_IMAGE) \
		triton-serve --model-repository=/models --metrics-config=summary_latencies=true \
		--cache-config=local,size=268435456 --allow-metrics=true $(ARGS)

compose-up: ## start Triton (gpu) + Prometheus (:9090) + Grafana (:3000) on 127.0.0.1 with docker/compose.yaml
	$(COMPOSE) up -d --build
	@echo "Grafana http://127.0.0.1:3000  Prometheus http://127.0.0.1:9090  Triton http://127.0.0.1:8000"

compose-down: ## stop the compose stack (volumes kept)
	@# compose interpolates the whole file, so its required TRITON_ADMIN_KEY / GRAFANA_ADMIN_PASSWORD must be set even to stop
	TRITON_ADMIN_KEY="$${TRITON_ADMIN_KEY:-not-needed-to-stop}" \
		GRAFANA_ADMIN_PASSWORD="$${GRAFANA_ADMIN_PASSWORD:-not-needed-to-stop}" $(COMPOSE) down

k8s-render: ## print the Kubernetes manifests of overlay K8S_OVERLAY (gpu | cpu)
	$(KUBECTL) kustomize deploy/kubernetes/overlays/$(K8S_OVERLAY)

k8s-apply: ## apply overlay K8S_OVERLAY to the current kubectl context
	$(KUBECTL) apply -k deploy/kubernetes/overlays/$(K8S_OVERLAY)

perf-smoke: ## a short perf_analyzer run per model against a running server (PERF_URL, gRPC)
	@mkdir -p $(PERF_SMOKE_DIR)
	@set -e; for m in $(PERF_MODELS); do \
		data=random; [ "$$m" = recommend ] && data=zero; \
		echo "perf smoke: $$m ($$data inputs)"; \
		$(PERF_ANALYZER) -m $$m -u $(PERF_URL) -i grpc --input-data $$data \
			--concurrency-range 1:8:7 --measurement-interval 3000 --percentile 95 \
			-f $(PERF_SMOKE_DIR)/$$m.csv; \
	done

gpu-smoke: ## docker-build, start the server on the GPU, wait until ready, perf-smoke, stop (CI's GPU job)
	$(MAKE) --no-print-directory docker-build
	$(DOCKER) rm -f $(SMOKE_CONTAINER) >/dev/null 2>&1 || true
	@# a throwaway admin key: perf_analyzer uses none of the restricted APIs
	$(DOCKER) run -d --name $(SMOKE_CONTAINER) --gpus 1 --shm-size=1g $(HARDENED) \
		-p 127.0.0.1:8000:8000 -p 127.0.0.1:8001:8001 -p 127.0.0.1:8002:8002 \
		-e TRITON_ADMIN_KEY="$$(head -c 24 /dev/urandom | base64)" $(SERVER_IMAGE)
	@set -e; trap '$(DOCKER) logs --tail 200 $(SMOKE_CONTAINER); $(DOCKER) rm -f $(SMOKE_CONTAINER) >/dev/null' EXIT; \
		for i in $$(seq 1 120); do \
			curl -fsS -o /dev/null http://localhost:8000/v2/health/ready && break; \
			[ $$i -lt 120 ] || { echo "Triton not ready after 600 s" >&2; exit 1; }; sleep 5; \
		done; \
		$(MAKE) --no-print-directory perf-smoke; \
		curl -fsS http://localhost:8002/metrics | grep -E '^nv_(inference_count|gpu_utilization)' 

# perf.run against the running server (docker-run / compose-up): make perf's scenarios, goals and report, each
# perf_analyzer call run in the SDK image of the release (TRITON_ADMIN_KEY: the server's key, for shared memory).
GPU_PERF_ARGS ?=
gpu-perf: $(VENV)/.installed ## make perf's scenarios and report against the running server (PERF_URL), perf_analyzer from the SDK image
	PERF_ANALYZER="$(PERF_ANALYZER)" $(PY) -m perf.run --url $(PERF_URL) --repo $(REPO) --artifacts $(ARTIFACTS) $(GPU_PERF_ARGS)

check-deploy: system-deps export-small $(CHECKOV_VENV)/.installed ## the deployment checks: checkov, hadolint, promtool, kustomize + schemas, live Prometheus scrape
	$(PY) -m pytest -q tests/deploy
