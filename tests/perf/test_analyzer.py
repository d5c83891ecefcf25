"""perf_analyzer 2.51.0: its command line, its CSV, and a short real run against the test server."""

from __future__ import annotations

from pathlib import Path

import pytest

from perf import goals, inputs, perf_analyzer

DATA = Path(__file__).parent / "data" / "run"


def test_perf_analyzer_is_the_2_51_release_and_its_libraries_load():
    assert perf_analyzer.version() == "2.51.0"


def test_a_recorded_csv_parses_into_throughput_latencies_and_the_server_breakdown():
    rows = perf_analyzer.parse_csv(next((DATA / "runs" / "nhits").glob("nhits.sweep-*-c1.csv")))
    (row,) = rows
    assert row["mode"] == "concurrency" and row["x"] == 1
    assert row["throughput"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    assert {"queue", "compute_infer", "network"} <= set(row["breakdown_us"])


def test_the_admin_key_for_shared_memory_is_sent_but_never_recorded(tmp_path: Path):
    p = perf_analyzer.Point(model="nhits", label="t", concurrency=2, shared_memory="system")
    cmd = perf_analyzer.command(p, "127.0.0.1:8001", tmp_path / "x.csv", key="s3cret")
    assert "triton-grpc-protocol-triton-admin-key:s3cret" in cmd
    assert "s3cret" not in " ".join(perf_analyzer.redact(cmd))
    with pytest.raises(perf_analyzer.AnalyzerError, match="admin key"):
        perf_analyzer.command(p, "127.0.0.1:8001", tmp_path / "x.csv")


def test_request_rate_points_use_poisson_arrivals(tmp_path: Path):
    p = perf_analyzer.Point(model="nhits", label="t", request_rate=250.0)
    cmd = perf_analyzer.command(p, "127.0.0.1:8001", tmp_path / "x.csv")
    assert cmd[cmd.index("--request-rate-range") + 1] == "250"
    assert cmd[cmd.index("--request-distribution") + 1] == "poisson"


@pytest.mark.slow
def test_a_short_perf_analyzer_run_against_the_test_server_is_recorded_and_parsed(triton, artifacts, repo, tmp_path):
    data = inputs.write("windows", artifacts, repo, tmp_path / "windows.json", n=32)
    point = perf_analyzer.Point(
        model="nhits",
        label="smoke",
        concurrency=2,
        input_data=str(data),
        measurement=perf_analyzer.Measurement(interval_ms=300, stability=50, max_trials=3),
    )
    urls = {"grpc": triton.grpc_url, "http": triton.http_url}
    rec = perf_analyzer.run_point(point, urls, tmp_path / "runs")
    assert (tmp_path / "runs" / f"{point.stem}.csv").is_file() and (tmp_path / "runs" / f"{point.stem}.json").is_file()
    f = goals.flat(rec)
    assert f["throughput"] > 0 and f["p99_ms"] > 0
    assert rec["server"]["nhits"]["inference_count"] > 0 and f["avg_batch"] >= 1.0
