"""Kubernetes: both overlays render with kustomize, pass strict schema validation, and point their
probes, ports, autoscaler and disruption budget at what Triton and each other really expose."""

from __future__ import annotations

import copy
from functools import cache

import pytest

from tests.deploy.support import (
    ENTRYPOINT,
    GRPC_PORT,
    HTTP_PORT,
    K8S,
    METRICS_PORT,
    PRODUCTION_FLAGS,
    check,
    load_yaml_all,
    make_vars,
    tool,
)

OVERLAYS = ("gpu", "cpu")
# Oldest Kubernetes the manifests are written for (autoscaling/v2, policy/v1 are GA well before).
KUBERNETES_VERSION = "1.29.0"


@cache
def render(overlay: str) -> dict[str, dict]:
    """`kubectl kustomize` of one overlay, as {kind: object}."""
    kubectl = tool("kubectl", "kubectl (with its built-in kustomize) is part of the machine image")
    docs = load_yaml_all(check([kubectl, "kustomize", str(K8S / "overlays" / overlay)]))
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one object of each kind expected"
    return by_kind


@pytest.fixture(params=OVERLAYS)
def rendered(request) -> tuple[str, dict[str, dict]]:
    return request.param, copy.deepcopy(render(request.param))


def container(objs: dict[str, dict]) -> dict:
    (c,) = objs["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def test_manifests_pass_strict_schema_validation(rendered):
    import kubernetes_validate

    _, objs = rendered
    assert set(objs) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"}
    for obj in objs.values():
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_strict_validation_rejects_a_misspelt_field(rendered):
    import kubernetes_validate

    _, objs = rendered
    broken = {**objs["Deployment"], "spec": {**objs["Deployment"]["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_probes_ask_triton_health_endpoints_on_its_http_port(rendered):
    _, objs = rendered
    c = container(objs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": HTTP_PORT, "grpc": GRPC_PORT, "metrics": METRICS_PORT}
    # no flag moves Triton off its default ports
    assert not [a for a in c["args"] if a.startswith(("--http-port", "--grpc-port", "--metrics-port"))]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] in ("/v2/health/live", "/v2/health/ready")
    annotations = objs["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_service_exposes_what_clients_need_and_metrics_stay_inside(rendered):
    _, objs = rendered
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in objs["Service"]["spec"]["ports"]}
    assert ports == {"http": (HTTP_PORT, "http"), "grpc": (GRPC_PORT, "grpc")}
    assert objs["Service"]["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_a_network_policy_admits_clients_to_inference_and_only_prometheus_to_metrics(rendered):
    _, objs = rendered
    policy = objs["NetworkPolicy"]["spec"]
    pod_labels = objs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"] and policy["egress"] == []  # no egress at all
    rules = {tuple(sorted(p["port"] for p in rule["ports"])): rule["from"] for rule in policy["ingress"]}
    assert set(rules) == {("grpc", "http"), ("metrics",)}
    (prometheus,) = rules[("metrics",)]
    assert prometheus["podSelector"] == {
        "matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In", "values": ["prometheus"]}]
    }  # the overlays' labels reach no selector of the clients' side
    assert "namespaceSelector" in prometheus


def test_pods_run_non_root_read_only_without_capabilities_under_runtime_default_seccomp(rendered):
    _, objs = rendered
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    c = container(objs)["securityContext"]
    assert c["readOnlyRootFilesystem"] is True and c["allowPrivilegeEscalation"] is False
    assert c["capabilities"] == {"drop": ["ALL"]} and c["privileged"] is False
    mounts = {m["mountPath"] for m in container(objs)["volumeMounts"]}
    assert {"/tmp", "/dev/shm"} <= mounts  # what Triton and the python backend write
    limits, requests = container(objs)["resources"]["limits"], container(objs)["resources"]["requests"]
    assert limits["cpu"] and limits["memory"] and requests["cpu"] and requests["memory"]


def test_selectors_find_the_pods_and_the_autoscaler_finds_the_deployment(rendered):
    target, objs = rendered
    deployment = objs["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["serving-target"] == target  # prometheus-k8s.yml turns it into the `target` label
    selectors = [
        deployment["spec"]["selector"]["matchLabels"],
        objs["Service"]["spec"]["selector"],
        objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= pod_labels.items()
    hpa = objs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert hpa["minReplicas"] > objs["PodDisruptionBudget"]["spec"]["minAvailable"], "a drain could never proceed"


def test_image_is_the_serving_image_at_the_makefile_version(rendered):
    _, objs = rendered
    assert container(objs)["image"] == make_vars("SERVER_IMAGE")["SERVER_IMAGE"]


def test_gpu_overlay_requests_a_gpu_and_runs_the_tensorrt_configs():
    objs = render("gpu")
    c = container(objs)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert c["args"] == [ENTRYPOINT, *PRODUCTION_FLAGS]
    tolerations = objs["Deployment"]["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_cpu_overlay_selects_the_cpu_configs_without_a_gpu():
    objs = render("cpu")
    c = container(objs)
    assert "nvidia.com/gpu" not in str(c["resources"])
    assert c["args"] == [
        ENTRYPOINT,
        *PRODUCTION_FLAGS,
        "--model-config-name=cpu",  # Triton's ONNX Runtime backend, in the image's default backend directory
    ]
    assert "tolerations" not in objs["Deployment"]["spec"]["template"]["spec"]
    assert objs["Deployment"]["metadata"]["name"].endswith("-cpu"), "cpu and gpu can share a namespace"


def test_pods_get_a_memory_backed_dev_shm_for_shared_memory(rendered):
    _, objs = rendered
    spec = objs["Deployment"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in container(objs)["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["dshm"] == "/dev/shm" and volumes["dshm"]["emptyDir"]["medium"] == "Memory"


def test_cpu_overlay_tolerates_more_queue_time_than_gpu():
    def queue_target(objs: dict[str, dict]) -> float:
        metric = objs["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]
        assert metric["metric"]["name"] == "triton_queue_time_us_per_request"
        return float(metric["target"]["averageValue"])

    assert queue_target(render("gpu")) < queue_target(render("cpu"))


def test_admin_key_comes_from_a_secret_that_is_not_committed(rendered):
    """triton-serve refuses to start without a key; both overlays mount the Secret triton-admin-key (created with
    kubectl, deploy/README.md), whose name nameSuffix must not rewrite, as a file: the key is in no environment."""
    _, objs = rendered
    env = {e["name"]: e for e in container(objs).get("env", [])}
    assert "TRITON_ADMIN_KEY" not in env
    path = env["TRITON_ADMIN_KEY_FILE"]["value"]
    (mount,) = [m for m in container(objs)["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert mount["readOnly"] is True
    volume = {v["name"]: v for v in objs["Deployment"]["spec"]["template"]["spec"]["volumes"]}[mount["name"]]
    assert volume["secret"]["secretName"] == "triton-admin-key" and path.endswith("/key")
    assert not [e for e in env.values() if "KEY" in e["name"] and e.get("value") != path], "a key in the manifest"
    assert "Secret" not in objs
    assert container(objs)["args"][0] == ENTRYPOINT
    readme = (K8S.parent / "README.md").read_text()  # deploy/README.md
    assert 'kubectl create secret generic triton-admin-key --from-literal=key="$(openssl rand' in readme


def test_pods_drain_before_triton_gets_sigterm_and_the_grace_period_covers_both(rendered):
    """A terminating pod leaves the endpoints at once; the preStop sleep keeps Triton up until traffic has moved
    (Triton 2.51 can crash when a request arrives while it stops), then SIGTERM and Triton's 30 s exit timeout."""
    _, objs = rendered
    spec = objs["Deployment"]["spec"]["template"]["spec"]
    command = container(objs)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and int(command[1]) >= 5
    assert spec["terminationGracePeriodSeconds"] >= int(command[1]) + 30
