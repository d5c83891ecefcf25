"""The Grafana dashboard: valid PromQL, the provisioned datasource, and the views the issue asks for.
test_live_monitoring checks its metric names against a running server."""

from __future__ import annotations

from tests.deploy.support import (
    DOCKER,
    GPU_ONLY_METRICS,
    PROMETHEUS_SYNTHETIC,
    dashboard,
    dashboard_exprs,
    load_yaml,
    promql_metric_names,
    promql_syntax_errors,
    recorded_names,
)


def test_every_query_is_valid_promql(tmp_path):
    exprs = [e for _, e in dashboard_exprs()]
    assert len(exprs) >= 15
    assert promql_syntax_errors(exprs, tmp_path) == ""


def test_panels_use_the_provisioned_datasource():
    (datasource,) = load_yaml(DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")["datasources"]
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"]
    (variable,) = dashboard()["templating"]["list"]
    assert variable["name"] == "model" and variable["datasource"]["uid"] == datasource["uid"]


def test_panel_ids_and_refids_are_unique():
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]


def test_dashboard_shows_rate_latency_quantiles_queue_batch_failures_and_gpu():
    exprs = [e for _, e in dashboard_exprs()]
    joined = "\n".join(exprs)
    assert "rate(nv_inference_request_success" in joined  # requests/s
    for summary in ("nv_inference_request_summary_us", "nv_inference_queue_summary_us"):
        for q in ("0.5", "0.95", "0.99"):
            assert f'{summary}{{model=~".*",quantile="{q}"}}' in joined, (summary, q)
    assert any("nv_inference_count" in e and "/" in e and "nv_inference_exec_count" in e for e in exprs)  # batch size
    assert "nv_inference_request_failure" in joined
    assert GPU_ONLY_METRICS - {"nv_gpu_power_usage", "nv_gpu_power_limit", "nv_energy_consumption"} <= set().union(
        *(promql_metric_names(e) for e in exprs)
    )


def test_names_that_are_not_triton_metrics_are_our_recording_rules_or_prometheus_own():
    names = set().union(*(promql_metric_names(e) for _, e in dashboard_exprs()))
    others = {n for n in names if not n.startswith("nv_")}
    assert others <= recorded_names() | PROMETHEUS_SYNTHETIC, others - recorded_names()
