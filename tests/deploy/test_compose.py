"""docker/compose.yaml: schema, GPU reservation, and the files it mounts."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tests.deploy.support import (
    COMPOSE,
    DOCKER,
    K8S,
    METRICS_PORT,
    check,
    compose_memory_bytes,
    k8s_memory_bytes,
    load_yaml,
    promtool,
    tool,
)


def services() -> dict:
    return load_yaml(COMPOSE)["services"]


def test_compose_file_matches_the_compose_specification():
    validator = tool("check-jsonschema", "pip install check-jsonschema (pyproject's test extra)")
    check([validator, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])


def test_triton_reserves_a_gpu_and_publishes_inference_on_loopback_only():
    triton = services()["triton"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert triton["ports"] == ["127.0.0.1:8000:8000", "127.0.0.1:8001:8001"]  # metrics: compose network only
    assert triton["expose"] == [str(METRICS_PORT)]
    assert triton["build"]["dockerfile"] == "docker/Dockerfile"
    assert (DOCKER / triton["build"]["context"]).resolve() == DOCKER.parent


def test_triton_needs_the_admin_key_and_is_limited_in_memory_as_on_kubernetes():
    triton = services()["triton"]
    # ${VAR:?message}: compose itself refuses to start without a key (triton-serve would refuse anyway)
    key = triton["environment"]["TRITON_ADMIN_KEY"]
    assert re.fullmatch(r"\$\{TRITON_ADMIN_KEY:\?[^}$]+\}", key), key
    limit = triton["deploy"]["resources"]["limits"]["memory"]
    (container,) = load_yaml(K8S / "base" / "deployment.yaml")["spec"]["template"]["spec"]["containers"]
    assert compose_memory_bytes(limit) == k8s_memory_bytes(container["resources"]["limits"]["memory"])
    assert triton["restart"] == "unless-stopped"


def _bind_mounts(service: dict) -> list[tuple[Path, str]]:
    out = []
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out.append(((DOCKER / source).resolve(), target))
    return out


def test_every_bind_mount_source_exists():
    for name, service in services().items():
        for source, target in _bind_mounts(service):
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"


def test_prometheus_config_is_valid_as_mounted_in_the_container(tmp_path):
    """Lay the mounts out as the container sees them, then `promtool check config` (rules included)."""
    root = tmp_path / "container"
    for source, target in _bind_mounts(services()["prometheus"]):
        dest = root / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, dest)
    config = root / "etc" / "prometheus" / "prometheus.yml"
    out = check([promtool(), "check", "config", str(config)])
    assert "SUCCESS: 1 rule files found" in out
    scrape = {job["job_name"]: job for job in load_yaml(config)["scrape_configs"]}
    static = scrape["triton"]["static_configs"][0]
    assert static["targets"] == [f"triton:{METRICS_PORT}"]
    assert static["labels"] == {"target": "gpu"}


def test_grafana_provisioning_points_at_the_mounted_dashboards():
    grafana = dict((target, source) for source, target in _bind_mounts(services()["grafana"]))
    provisioning = grafana["/etc/grafana/provisioning"]
    provider = load_yaml(provisioning / "dashboards" / "triton.yaml")["providers"][0]
    dashboards_dir = grafana[provider["options"]["path"]]
    assert (dashboards_dir / "triton.json").is_file()
    datasource = load_yaml(provisioning / "datasources" / "prometheus.yaml")["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in services()


def test_every_published_port_is_bound_to_loopback():
    for name, service in services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_every_service_is_hardened_non_root_read_only_without_capabilities_and_limited():
    """checkov has no Compose framework (it scans the Dockerfiles and the Kubernetes manifests); this test holds
    compose to the same rules."""
    for name, service in services().items():
        user = str(service.get("user", ""))
        assert user and not user.startswith(("0:", "root")) and user.split(":")[0] != "0", (name, user)
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert not service.get("privileged") and "network_mode" not in service, name
        limits = service["deploy"]["resources"]["limits"]
        assert limits.get("memory") and limits.get("cpus"), (name, limits)


def test_grafana_has_no_anonymous_access_and_no_default_password():
    env = services()["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env
    password = env["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}$]+\}", password), password  # compose refuses without one
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
