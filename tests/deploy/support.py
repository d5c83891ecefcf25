"""Shared helpers of the deployment checks: Makefile values, tools, file parsers, PromQL names."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
RULES = DEPLOY / "prometheus" / "triton-rules.yaml"
RULES_TEST = DEPLOY / "prometheus" / "triton-rules_test.yaml"
K8S_SCRAPE = DEPLOY / "prometheus" / "prometheus-k8s.yml"
ADAPTER = DEPLOY / "prometheus-adapter" / "config.yaml"
COMPOSE = DOCKER / "compose.yaml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "triton.json"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
APT_PACKAGES = ROOT / ".ci" / "apt-packages.txt"

# The serving image's entry point (docker/triton-serve, installed on PATH): it verifies the artifacts and
# starts tritonserver with the restricted APIs; the Dockerfile CMD, compose and Kubernetes all run it.
ENTRYPOINT = "triton-serve"
ENTRYPOINT_SCRIPT = DOCKER / ENTRYPOINT
# Production flags (docker/Dockerfile CMD); compose, Kubernetes and `make docker-run` repeat them.
PRODUCTION_FLAGS = (
    "--model-repository=/models",
    "--metrics-config=summary_latencies=true",
    "--cache-config=local,size=268435456",
    "--allow-metrics=true",
)
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002  # Triton's defaults; no flag changes them

# Published only by a server that sees a GPU (DCGM): a CPU-only Triton cannot expose them.
GPU_ONLY_METRICS = frozenset(
    {
        "nv_gpu_utilization",
        "nv_gpu_memory_used_bytes",
        "nv_gpu_memory_total_bytes",
        "nv_gpu_power_usage",
        "nv_gpu_power_limit",
        "nv_energy_consumption",
    }
)
# Series Prometheus makes itself for every target.
PROMETHEUS_SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})


def tool(name: str, hint: str) -> str:
    """Path of a command-line tool from the virtualenv or PATH; fails (not skips) when absent."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} is not installed: {hint}")
    return found


def promtool() -> str:
    return tool("promtool", "apt-get install prometheus (listed in .ci/apt-packages.txt)")


def run(cmd: list[str], cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def check(cmd: list[str], cwd: Path = ROOT, timeout: float = 120) -> str:
    proc = run(cmd, cwd, timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@cache
def make_vars(*names: str) -> dict[str, str]:
    """Values of Makefile variables as make itself expands them (deploy/deploy.mk included)."""
    snippet = "_deploy_print:\n" + "".join(f"\t@echo '{n}=$({n})'\n" for n in names)
    proc = subprocess.run(
        ["make", "-s", "--no-print-directory", "-f", "Makefile", "-f", "-", "_deploy_print"],
        cwd=ROOT,
        input=snippet,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return {k: v.strip() for k, v in values.items()}


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def load_yaml_all(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def dockerfile_args(path: Path) -> dict[str, str]:
    args = {}
    for word, rest in dockerfile_instructions(path):
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value.strip('"')
    return args


def dockerfile_cmd(path: Path) -> list[str]:
    cmds = [json.loads(rest) for word, rest in dockerfile_instructions(path) if word == "CMD"]
    assert len(cmds) == 1, f"{path.name}: expected one exec-form CMD"
    return cmds[0]


def shell_assignment(path: Path, name: str) -> str:
    """The value of a top-level `NAME=value` / `NAME="value"` / `NAME=${X:-value}` line of a shell script."""
    m = re.search(rf"^{name}=(.*)$", path.read_text(), re.M)
    assert m, f"{path.name} no longer assigns {name}"
    value = m.group(1).strip()
    default = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return (default.group(1) if default else value).strip('"')


def compose_memory_bytes(value: str | int) -> int:
    """Bytes of a compose memory value ("16g", "16gb", "512m"; Docker's units are binary)."""
    m = re.fullmatch(r"(\d+)([kmg]?)b?", str(value).strip().lower())
    assert m, f"not a compose memory value: {value!r}"
    return int(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2)]


def k8s_memory_bytes(value: str | int) -> int:
    """Bytes of a Kubernetes memory quantity ("16Gi" binary, "16G" decimal)."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(value).strip())
    assert m, f"not a Kubernetes memory quantity: {value!r}"
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    return int(m.group(1)) * units.get(m.group(2) or "", 1)


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern that matches the path (or one of its parents) decides."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        regex = re.escape(pat.strip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


def dockerignore(path: Path) -> list[str]:
    ignore = path.with_name(path.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore} is missing: BuildKit reads <Dockerfile>.dockerignore for this build"
    lines = (raw.strip() for raw in ignore.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool", "inf", "nan",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (strings, label matchers, groupings, ranges removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs(substitute: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(panel title, expr) for every query of the dashboard, template variables substituted."""
    subs = {"$__rate_interval": "1m", "$model": ".*"} | (substitute or {})
    out = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for key, value in subs.items():
                expr = expr.replace(key, value)
            out.append((panel["title"], expr))
    return out


def recorded_names() -> set[str]:
    return {r["record"] for g in load_yaml(RULES)["groups"] for r in g["rules"] if "record" in r}


def adapter_queries(matchers: str, group_by: str) -> list[tuple[str, str]]:
    """(published metric name, PromQL) of every prometheus-adapter rule, its template filled in."""
    out = []
    for rule in load_yaml(ADAPTER)["rules"]:
        q = rule["metricsQuery"].replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", group_by)
        q = q.replace("<<.Series>>", rule["name"]["matches"].strip("^$"))
        out.append((rule["name"]["as"], q))
    return out


def promql_syntax_errors(exprs: list[str], tmp: Path) -> str:
    """Parse expressions with promtool (as recording rules); returns promtool's complaint or ''."""
    rules = {
        "groups": [{"name": "check", "rules": [{"record": f"check:e{i}", "expr": e} for i, e in enumerate(exprs)]}]
    }
    path = tmp / "exprs.yaml"
    path.write_text(yaml.safe_dump(rules))
    proc = run([promtool(), "check", "rules", str(path)])
    return "" if proc.returncode == 0 else proc.stdout + proc.stderr


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)  # as Kubernetes service discovery names its labels


def k8s_meta_labels(target: str, namespace: str = "serving", pod: str = "triton-0") -> dict[str, str]:
    """What Kubernetes service discovery reports for the metrics port of a pod of deploy/kubernetes."""
    deployment = load_yaml(K8S / "base" / "deployment.yaml")
    template = deployment["spec"]["template"]
    labels = {
        f"__meta_kubernetes_pod_label_{_sanitize(k)}": v
        for k, v in (template["metadata"]["labels"] | {"serving-target": target}).items()
    }
    annotations = {
        f"__meta_kubernetes_pod_annotation_{_sanitize(k)}": v for k, v in template["metadata"]["annotations"].items()
    }
    return (
        labels
        | annotations
        | {
            "__meta_kubernetes_pod_container_port_name": "metrics",
            "__meta_kubernetes_namespace": namespace,
            "__meta_kubernetes_pod_name": pod,
        }
    )


def k8s_scrape_job(metrics_host_port: str, target: str = "cpu") -> dict:
    job = copy.deepcopy(load_yaml(K8S_SCRAPE)["scrape_configs"][0])
    job.pop("kubernetes_sd_configs")
    job["static_configs"] = [{"targets": [metrics_host_port], "labels": k8s_meta_labels(target)}]
    return job
