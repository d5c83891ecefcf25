"""Alert and recording rules (promtool), their unit tests, the k8s scrape config and the adapter rules."""

from __future__ import annotations

import pytest
import yaml

from models import spec
from tests.deploy.support import (
    ADAPTER,
    K8S,
    K8S_SCRAPE,
    RULES,
    RULES_TEST,
    adapter_queries,
    check,
    k8s_meta_labels,
    load_yaml,
    promql_syntax_errors,
    promtool,
)

ALERTS = {"TritonLatencyBudgetExceeded", "TritonRequestFailures", "TritonQueueTimeRising", "TritonGpuMemoryHigh",
          "TritonDown", "TritonAbsent"}  # fmt: skip
# Service levels of the deployment issue (cpu target), microseconds.
CPU_BUDGETS_US = {"reservoir": 5000, "nhits": 10000, "similarity": 10000}


def rules() -> list[dict]:
    return [r for g in load_yaml(RULES)["groups"] for r in g["rules"]]


def test_promtool_check_rules():
    out = check([promtool(), "check", "rules", str(RULES)])
    assert "SUCCESS" in out


def test_promtool_unit_tests_pass():
    out = check([promtool(), "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent)
    assert "SUCCESS" in out


def test_every_alert_is_shown_firing_and_quiet():
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert alerts == ALERTS
    firing, quiet = set(), set()
    for case in load_yaml(RULES_TEST)["tests"]:
        for t in case.get("alert_rule_test", []):
            (firing if t["exp_alerts"] else quiet).add(t["alertname"])
    assert firing == ALERTS, f"never shown firing: {ALERTS - firing}"
    assert quiet == ALERTS, f"never shown quiet: {ALERTS - quiet}"


def test_latency_budgets_are_labelled_series_for_both_targets():
    budgets = {
        (r["labels"]["model"], r["labels"]["target"]): float(r["expr"].removeprefix("vector(").removesuffix(")"))
        for r in rules()
        if r.get("record") == "triton:latency_budget_p95_us"
    }
    assert {m for m, _ in budgets} <= set(spec.MODELS), "a budget names a model that does not exist"
    for model, budget in CPU_BUDGETS_US.items():
        assert budgets[(model, "cpu")] == budget
        assert (model, "gpu") in budgets and budgets[(model, "gpu")] <= budget


def test_kubernetes_scrape_config_is_valid(tmp_path):
    """Debian's Prometheus is built without Kubernetes service discovery, so promtool here rejects
    `kubernetes_sd_configs`; the rest of the file (relabelling, rules) is checked with a static
    target that carries the same __meta_kubernetes_* labels, and test_live_monitoring runs it."""
    config = load_yaml(K8S_SCRAPE)
    job = config["scrape_configs"][0]
    assert job["job_name"] == "triton"
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["static_configs"] = [{"targets": ["127.0.0.1:8002"], "labels": k8s_meta_labels("cpu")}]
    config["rule_files"] = [str(RULES)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    out = check([promtool(), "check", "config", str(path)])
    assert "SUCCESS: 1 rule files found" in out


def test_adapter_queries_are_valid_promql(tmp_path):
    queries = adapter_queries('namespace="serving",pod=~"triton-.*"', "pod")
    assert len(queries) == 2
    assert promql_syntax_errors([q for _, q in queries], tmp_path) == ""


def test_hpa_scales_on_metrics_the_adapter_publishes():
    published = {rule["name"]["as"] for rule in load_yaml(ADAPTER)["rules"]}
    hpa = load_yaml(K8S / "base" / "hpa.yaml")
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted and wanted <= published
    for rule in load_yaml(ADAPTER)["rules"]:
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        # the labels exist only if the scrape config writes them
        written = {r.get("target_label") for r in load_yaml(K8S_SCRAPE)["scrape_configs"][0]["relabel_configs"]}
        assert {"namespace", "pod"} <= written


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_alerts_have_severity_and_summary(alert):
    rule = next(r for r in rules() if r.get("alert") == alert)
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
