"""A real Prometheus (Debian's binary) scrapes the session's real Triton (cpu target) with the
relabelling of deploy/prometheus/prometheus-k8s.yml and the rules of triton-rules.yaml; the
dashboard, the rules and the adapter queries are then run against what it collected."""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from models import spec
from serving.server import free_port
from tests.deploy.support import (
    ADAPTER,
    DOCKER,
    GPU_ONLY_METRICS,
    K8S,
    RULES,
    adapter_queries,
    dashboard_exprs,
    dockerfile_instructions,
    k8s_scrape_job,
    load_yaml,
    promql_metric_names,
    tool,
)

TIMEOUT = 60.0  # seconds for Prometheus to come up, scrape, evaluate
TRAFFIC = {"nhits": 8, "similarity": 8}  # requests per model; similarity has the response cache


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen
    log: Path

    def api(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"prometheus exited:\n{self.log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"prometheus not ready after {TIMEOUT:.0f} s:\n{self.log.read_text()[-3000:]}")

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def wait_for(self, expr: str, accept, what: str, tick=None) -> list[dict]:
        """Poll `expr` until `accept(result)`; `tick()` runs before each poll (e.g. to send a request)."""
        deadline = time.monotonic() + TIMEOUT
        result: list[dict] = []
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"prometheus exited:\n{self.log.read_text()[-3000:]}"
            if tick is not None:
                tick()
            result = self.query(expr)
            if accept(result):
                return result
            time.sleep(0.5)
        raise AssertionError(f"{what}: `{expr}` still gives {result} after {TIMEOUT:.0f} s")


def host_port(metrics_url: str) -> str:
    return urllib.parse.urlsplit(metrics_url).netloc


def send(http_url: str, model: str, n: int = 1, seed: int | None = None) -> None:
    """n batch-1 requests of random float inputs (distinct, so the response cache misses)."""
    (tensor,) = spec.MODELS[model].inputs
    rng = np.random.default_rng(seed)
    client = httpclient.InferenceServerClient(http_url)
    try:
        for _ in range(n):
            x = rng.standard_normal((1, *tensor.dims)).astype(tensor.dtype)
            inp = httpclient.InferInput(tensor.name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            client.infer(model, [inp])
    finally:
        client.close()


@pytest.fixture(scope="module")
def traffic(triton) -> dict[str, int]:
    """A few requests per model, so that every per-model series exists; returns the request counts."""
    for model, n in TRAFFIC.items():
        send(triton.http_url, model, n, seed=0)
    return TRAFFIC


@pytest.fixture(scope="module")
def prometheus(triton, traffic, tmp_path_factory) -> Prometheus:
    binary = tool("prometheus", "apt-get install prometheus (listed in .ci/apt-packages.txt)")
    work = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [k8s_scrape_job(host_port(triton.metrics_url), target="cpu")],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    log = work / "prometheus.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address={url.removeprefix('http://')}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(url, process, log)
    try:
        prom.wait_ready()
        prom.wait_for('up{job="triton"}', lambda r: r and r[0]["value"][1] == "1", "Triton scraped")
        yield prom
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def server_value(metrics_url: str, name: str, model: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    values = [float(v) for v in re.findall(rf'^{name}{{[^}}]*model="{model}"[^}}]*}} (\S+)$', text, re.M)]
    assert values, f"{name} for {model} not on {metrics_url}"
    return sum(values)


def exposed_metric_names(metrics_url: str) -> set[str]:
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", text, re.M))
    return names | set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def finite(result: list[dict]) -> bool:
    return bool(result) and all(math.isfinite(float(r["value"][1])) for r in result)


def test_probe_and_healthcheck_paths_answer_on_a_real_server(triton):
    deployment = load_yaml(K8S / "base" / "deployment.yaml")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    paths = {container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe", "startupProbe")}
    (healthcheck,) = [rest for word, rest in dockerfile_instructions(DOCKER / "Dockerfile") if word == "HEALTHCHECK"]
    paths |= set(re.findall(r"http://127\.0\.0\.1:8000(/v2/health/\w+)", healthcheck))
    assert paths == {"/v2/health/ready", "/v2/health/live"}
    for path in sorted(paths):
        with urllib.request.urlopen(f"http://{triton.http_url}{path}", timeout=5) as r:
            assert r.status == 200, path


def test_prometheus_scrapes_the_inference_count_of_nhits(triton, prometheus):
    expected = server_value(triton.metrics_url, "nv_inference_count", "nhits")
    assert expected >= TRAFFIC["nhits"]
    result = prometheus.wait_for(
        'nv_inference_count{model="nhits"}',
        lambda r: r and float(r[0]["value"][1]) >= expected,
        "the nhits inference count",
    )
    labels = result[0]["metric"]
    # the relabelling of prometheus-k8s.yml: what the rules (target) and the adapter (namespace, pod) need
    assert labels | {"job": "triton", "target": "cpu", "namespace": "serving", "pod": "triton-0"} == labels


def test_latency_recording_rule_covers_plain_and_cached_models(triton, prometheus):
    # nhits: the request summary; similarity (response cache): the sum of the stage summaries.
    # Summary quantiles cover a sliding window, so requests keep coming while we wait.
    for model in TRAFFIC:
        stages = " or ".join(
            f'nv_inference_{stage}_summary_us{{model="{model}",quantile="0.95"}}'
            for stage in ("request", "queue", "compute_input", "compute_infer", "compute_output")
        )
        try:
            prometheus.wait_for(
                f'triton:request_latency_p95_us{{model="{model}",target="cpu"}}',
                finite,
                f"p95 of {model}",
                tick=lambda model=model: send(triton.http_url, model),
            )
        except AssertionError as exc:
            seen = {r["metric"]["__name__"]: r["value"][1] for r in prometheus.query(stages)}
            raise AssertionError(f"{exc}\nstage p95s now: {seen}") from None
    # the alert's join: every budgeted model that has traffic meets its budget series
    joined = prometheus.wait_for(
        "triton:request_latency_p95_us / on (model, target) group_left triton:latency_budget_p95_us",
        lambda r: {x["metric"]["model"] for x in r} >= set(TRAFFIC),
        "latency joined with budgets",
    )
    assert all(x["metric"]["target"] == "cpu" for x in joined)


def test_a_healthy_server_meets_no_availability_alert_condition(prometheus):
    """The conditions of TritonDown and TritonAbsent are false and nothing fires. (Right after
    Prometheus starts, TritonAbsent may be pending for the moment before the first scrape.)"""
    alerts = {r["alert"]: r["expr"] for g in load_yaml(RULES)["groups"] for r in g["rules"] if "alert" in r}
    prometheus.wait_for("triton:latency_budget_p95_us", lambda r: len(r) == 6, "budget series")
    for name in ("TritonDown", "TritonAbsent"):
        assert prometheus.query(alerts[name]) == [], f"{name}: its condition holds on a healthy server"
    firing = {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"] if a["state"] == "firing"}
    assert not firing, firing


def test_adapter_queries_give_one_value_for_the_pod(prometheus):
    for name, query in adapter_queries('namespace="serving",pod="triton-0"', "pod"):
        result = prometheus.wait_for(query, finite, f"adapter metric {name}")
        assert [r["metric"] for r in result] == [{"pod": "triton-0"}], name
        assert float(result[0]["value"][1]) >= 0


def test_dashboard_rules_and_adapter_name_only_metrics_the_server_exposes(triton, prometheus):
    exposed = exposed_metric_names(triton.metrics_url)
    exprs = [e for _, e in dashboard_exprs()]
    exprs += [r["expr"] for g in load_yaml(RULES)["groups"] for r in g["rules"]]
    exprs += [r["metricsQuery"] for r in load_yaml(ADAPTER)["rules"]]
    wanted = {n for e in exprs for n in promql_metric_names(e) if n.startswith("nv_")}
    missing = wanted - exposed - GPU_ONLY_METRICS
    assert not missing, f"named but not exposed by Triton 2.51: {sorted(missing)}"
    # the exception list is only what a CPU-only server cannot have
    assert not GPU_ONLY_METRICS & exposed


def test_every_dashboard_query_returns_data(prometheus):
    pending = {
        expr: title
        for title, expr in dashboard_exprs({"$__rate_interval": "30s"})
        if not promql_metric_names(expr) & GPU_ONLY_METRICS
    }
    deadline = time.monotonic() + TIMEOUT
    while pending and time.monotonic() < deadline:
        pending = {expr: title for expr, title in pending.items() if not prometheus.query(expr)}
        time.sleep(0.5)
    assert not pending, f"panels without data: {pending}"
    for title, expr in dashboard_exprs({"$__rate_interval": "30s"}):
        if promql_metric_names(expr) & GPU_ONLY_METRICS:
            assert prometheus.query(expr) == [], f"{title}: a CPU server should have no GPU series"
