"""Faults under load against private tritonservers (the session server is left alone): a model file
missing or corrupt at start, the server killed or stopped and started again.
What each scenario saw goes to build/reliability/faults_test.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import spec
from reliability import faults
from reliability.load import ERROR, OK, WRONG

pytestmark = pytest.mark.slow

MODELS = ("nhits", "reservoir", "forecast_blend", "forecast")


def _strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "records"}


def test_a_missing_and_a_corrupt_model_file_are_reported_by_name_while_the_others_serve(
    repo, workload, tmp_path, record
):
    result = faults.bad_artifacts(repo, tmp_path, missing="nhits", corrupt="reservoir", workload=workload)
    record("faults_test", {"bad_artifacts": result})
    unavailable = result["unavailable_models"]
    assert set(unavailable) == {"nhits", "reservoir", "forecast"}, unavailable
    assert result["missing_file"] in unavailable["nhits"], unavailable["nhits"]
    assert result["corrupt_file"] in unavailable["reservoir"], unavailable["reservoir"]
    assert result["healthy_model_answer"] == "correct"
    problems = "\n".join(result["integrity_problems"])
    assert result["missing_file"] in problems and result["corrupt_file"] in problems


def test_with_exclude_unverified_a_tampered_model_and_its_ensemble_are_refused_by_name_and_the_others_serve(
    repo, workload, tmp_path
):
    """TritonServer(exclude_unverified=True): the default (refuse to start) is in test_security.py."""
    from reliability.load import Caller, Endpoint
    from reliability.reference import check
    from serving.server import ServerError

    small = faults.copy_repo(repo, tmp_path / "repo", MODELS)
    tampered = spec.version_dir("nhits", small) / spec.ONNX_INT8
    tampered.write_bytes(tampered.read_bytes() + b"\0")
    with pytest.raises(ServerError, match=str(tampered)):
        faults.make_server(small, tmp_path / "refused").start(timeout=120)
    server = faults.make_server(small, tmp_path / "run")
    server.exclude_unverified = True
    server.start(timeout=180)
    try:
        unavailable = server.unavailable_models()
        assert set(unavailable) == {"nhits", "forecast"}, unavailable
        assert str(tampered) in unavailable["nhits"] and "nhits" in unavailable["forecast"]
        caller = Caller(Endpoint(server.grpc_url, server.http_url))
        try:
            for model in ("reservoir", "forecast_blend"):
                case = workload.cases[model][0]
                assert check(model, caller.call("grpc", model, case.inputs), case.expected) is None, model
            with pytest.raises(Exception, match="(?i)nhits|not found|unavailable|not ready"):
                caller.call("http", "nhits", workload.cases["nhits"][0].inputs)
        finally:
            caller.close()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def small_repo(repo, tmp_path_factory) -> Path:
    return faults.copy_repo(repo, tmp_path_factory.mktemp("faults") / "repo", MODELS)


@pytest.fixture(scope="module")
def fault_server(small_repo, tmp_path_factory):
    server = faults.make_server(small_repo, tmp_path_factory.mktemp("fault-run"))
    server.start(timeout=180)
    yield server
    server.stop()


def test_a_killed_server_started_again_loses_no_answer_and_gives_no_wrong_one(fault_server, workload, record):
    """SIGKILL of tritonserver under load (on the native backends a crash anywhere is the server's), started again
    at once: requests in flight end in an explicit error (ServerUnavailableError) or, retried, a correct answer;
    once the client's circuit breaker lets its probe through (cooldown 5 s), every answer is correct again."""
    result = faults.restart(
        fault_server, workload, before_s=1.5, after_s=8.0, targets=("nhits", "forecast"), retries=20, kill=True
    )
    record("faults_test", {"kill": _strip(result)})
    records = result["records"]
    assert result["signal"] == "SIGKILL"
    assert records and all(r.outcome in (OK, ERROR) for r in records)
    assert result["summary"]["wrong"] == 0
    recovered = result["first_correct_answer_after_ready_s"]
    assert recovered is not None and recovered < 5.0 + 3.0, result
    cooldown = 5.0  # clients.Client's circuit breaker: each worker's client probes again after it
    late = [r for r in records if r.t > result["stop_at_s"] + result["ready_again_after_s"] + cooldown + 1.0]
    assert late and all(r.outcome == OK for r in late), {r.detail for r in late if r.outcome != OK}


def test_a_restart_under_load_ends_every_request_in_a_correct_answer_or_an_explicit_error(
    fault_server, small_repo, workload, tmp_path, record
):
    """clients.Client with a second server to fail over to: the restart of the first costs no request, but for
    Triton 2.51's shutdown race (RELIABILITY.md): after SIGTERM it unloads the models at the end of its exit
    timeout (5 s) even under running requests, so a request executing then fails, explicitly (INTERNAL, ONNX
    Runtime's error), while the server stops. Nothing is answered wrongly."""
    backup = faults.make_server(small_repo, tmp_path / "backup")
    backup.start(timeout=180)
    try:
        result = faults.restart(
            fault_server, workload, before_s=1.5, after_s=3.0, targets=("nhits", "forecast"), failover=backup
        )
    finally:
        backup.stop()
    record("faults_test", {"restart_with_failover": _strip(result)})
    records = result["records"]
    assert records and all(r.outcome in (OK, ERROR) for r in records)
    assert sum(r.outcome == WRONG for r in records) == 0
    errors = [r for r in records if r.outcome == ERROR]
    race = [r for r in errors if "onnx runtime error" in r.detail and r.detail.startswith("InferenceServerError")]
    assert errors == race, {r.detail[:160] for r in errors if r not in race}
    stopping = (result["stop_at_s"] - 1.0, result["stop_at_s"] + result["stop_took_s"] + 1.0)
    assert all(stopping[0] <= r.t <= stopping[1] for r in race), ([r.t for r in race], stopping)
    assert len(race) <= 8, f"{len(race)} requests lost to the shutdown race"
    assert result["requests_spanning_the_restart"]["ok"] > 0
    assert result["first_correct_answer_after_ready_s"] is not None


def test_the_launcher_with_restart_brings_a_killed_tritonserver_back_on_the_same_ports(repo, workload, tmp_path):
    """`python -m serving.server --restart`: tritonserver killed -> started again, same ports, the crashed
    server's log kept; SIGTERM still stops it cleanly."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    from reliability.load import Caller, Endpoint
    from reliability.reference import check
    from serving import procs
    from serving.server import free_port

    small = faults.copy_repo(repo, tmp_path / "repo", ("forecast_blend",))
    ports = [free_port(), free_port(), free_port()]
    run_dir = tmp_path / "run"
    cli = subprocess.Popen(
        [sys.executable, "-m", "serving.server", "--repo", str(small), "--run-dir", str(run_dir), "--restart",
         "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=spec.ROOT,
    )  # fmt: skip
    case = workload.cases["forecast_blend"][0]
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(cli.stdout), daemon=True)
    reader.start()

    def launcher_says(text: str, seconds: float) -> bool:
        """The server can answer before the launcher's own readiness poll has seen it: wait for its line."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not any(text in line for line in list(lines)):
            time.sleep(0.1)
        return any(text in line for line in list(lines))

    def answer_within(seconds: float) -> bool:
        """A fresh client per try: a tritonclient whose server was killed keeps failing on its dead connection."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            caller = Caller(Endpoint(f"127.0.0.1:{ports[1]}", f"127.0.0.1:{ports[0]}"))
            try:
                got = caller.call("http", "forecast_blend", case.inputs)
                return check("forecast_blend", got, case.expected) is None
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.25)
            finally:
                caller.close()
        return False

    try:
        assert launcher_says("Triton ready:", 120) and answer_within(30), "the launcher never served"
        servers = [p for p in procs.children(cli.pid) if p.argv and p.argv[0].endswith("tritonserver")]
        assert len(servers) == 1, servers
        os.kill(servers[0].pid, signal.SIGKILL)
        time.sleep(1.0)
        assert answer_within(120), "no correct answer after the kill"
        again = [p for p in procs.children(cli.pid) if p.argv and p.argv[0].endswith("tritonserver")]
        assert again and again[0].pid != servers[0].pid
        assert list(run_dir.glob("tritonserver.crash1-*.log")), "the crashed server's log was not kept"
    finally:
        cli.send_signal(signal.SIGTERM)
        cli.wait(timeout=60)
        reader.join(timeout=10)
    out = "".join(lines)
    assert cli.returncode == 0, out
    assert "restarting (--restart)" in out and "Triton stopped" in out
