"""`python -m perf.run --quick` end to end: real tritonservers, perf_analyzer and the in-process baselines
on one small scenario of the test repository, then the files that perf.goals and perf.report read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from models import spec
from perf import scenarios

# nhits.yaml cut down to what the goals need: a sweep with c16, the batching-off points, both baselines
SCENARIO = {
    "model": "nhits",
    "about": "N-HiTS, quick end-to-end test",
    "input_data": {"kind": "windows", "n": 64},
    "runs": [{"name": "sweep", "protocol": "grpc", "concurrency": [1, 16]}],
    "batching_off": {"concurrency": [16]},
    "baselines": ["eager", "ort"],
}


@pytest.mark.slow
def test_a_quick_run_writes_records_baselines_environment_and_a_summary_with_goals(repo, artifacts, tmp_path: Path):
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "nhits.yaml").write_text(yaml.safe_dump(SCENARIO))
    assert scenarios.validate(scenarios.load(tmp_path / "scenarios" / "nhits.yaml"), repo) == []
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "perf.run", "--repo", str(repo), "--artifacts", str(artifacts), "--quick"]
    cmd += ["--scenarios", str(tmp_path / "scenarios"), "--out", str(out), "--skip-extras", "--no-report"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=spec.ROOT, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run = (out / "latest").resolve()
    assert not (run / "errors").exists() and not (run / "repos").exists()

    records = {p.stem: json.loads(p.read_text()) for p in (run / "runs" / "nhits").glob("*.json")}
    want = {"nhits.sweep-grpc-b1-c1", "nhits.sweep-grpc-b1-c16", "nhits.batching_off-grpc-b1-c16"}
    assert set(records) == want and all((run / "runs" / "nhits" / f"{s}.csv").is_file() for s in want)
    for rec in records.values():
        assert rec["row"]["throughput"] > 0 and 0 < rec["row"]["p50_ms"] <= rec["row"]["p99_ms"]
        assert rec["server"]["nhits"]["inference_count"] > 0
    assert records["nhits.sweep-grpc-b1-c16"]["server"]["nhits"]["avg_batch"] >= 1.0

    b = json.loads((run / "baselines.json").read_text())["nhits"]
    assert b["eager"]["throughput"] > 0 and b["served_batch"] >= 1
    assert set(b["ort"]) == {"fp32", "int8"} and set(b["ort"]["fp32"]) == {"1", str(b["served_batch"]), "64"}
    assert set(b["int8_paired"]) == {"1", "64"} and b["op_profile"]["fp32"] and b["op_profile"]["int8"]

    env = json.loads((run / "env.json").read_text())
    assert env["run"]["quick"] and env["run"]["scenarios"] == ["nhits"] and env["versions"]["tritonserver"]
    assert env["versions"]["perf_analyzer"] == "2.51.0" and env["machine"]["nproc"] >= 1 and env["machine_end"]
    assert set(env["run"]["phases_s"]) >= {"servers_start", "served", "batching_off", "baselines"}
    assert env["configs"]["nhits"]["threads"] >= 1
    assert json.loads((run / "extras.json").read_text()) == {}

    summary = json.loads((run / "summary.json").read_text())
    assert {g["goal"] for g in summary["goals"] if g["model"] == "nhits"} >= {
        "served / PyTorch eager",
        "dynamic batching on / off",
        "served / in-process ORT, same batch",
    }
    measured = {g["goal"]: g for g in summary["goals"] if g["model"] == "nhits" and g["value"] is not None}
    assert (
        measured["dynamic batching on / off"]["value"] > 0
        and measured["served / in-process ORT, same batch"]["value"] > 0
    )
    assert summary["ratios"]["nhits.dynbatch"] > 0 and summary["models"]["nhits"]["served_batch"] == b["served_batch"]
    assert "results:" in proc.stdout and "dynamic batching on / off" in proc.stdout


@pytest.mark.slow
def test_url_measures_a_running_server_through_the_perf_analyzer_command(triton, repo, artifacts, tmp_path: Path):
    """`perf.run --url` (make gpu-perf): no server of its own, perf_analyzer as $PERF_ANALYZER says."""
    from perf import perf_analyzer

    # user_embedding: a model without priority lanes, which no other test floods on the shared server
    scenario = {"model": "user_embedding", "about": "--url test", "input_data": {"kind": "user_ids", "n": 64}}
    scenario["runs"] = [{"name": "sweep", "protocol": "grpc", "concurrency": [1]}]
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "user_embedding.yaml").write_text(yaml.safe_dump(scenario))
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "perf.run", "--repo", str(repo), "--artifacts", str(artifacts), "--quick"]
    cmd += ["--scenarios", str(tmp_path / "scenarios"), "--out", str(out), "--no-report"]
    cmd += ["--url", triton.grpc_url, "--http-url", triton.http_url]
    wrapper = tmp_path / "pa"  # a command of its own, as `docker run ... perf_analyzer` is
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\nexec {" ".join(perf_analyzer.binary())} "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "PERF_ANALYZER": f"{wrapper}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=spec.ROOT, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run = (out / "latest").resolve()
    rec = json.loads((run / "runs" / "user_embedding" / "user_embedding.sweep-grpc-b1-c1.json").read_text())
    assert rec["row"]["throughput"] > 0 and rec["server"]["user_embedding"]["inference_count"] > 0
    env_json = json.loads((run / "env.json").read_text())
    assert env_json["run"]["url"] == triton.grpc_url and not (run / "repos").exists()
    assert not (run / "baselines.json").exists() and not list(run.glob("server-*"))
    assert f"-u {triton.grpc_url}" in (tmp_path / "calls").read_text()
