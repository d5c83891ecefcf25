"""Fault scenarios against a real tritonserver under load; each returns a dict of what happened.

    python -m reliability.faults --repo build/test/model_repository --artifacts build/test/artifacts
    python -m reliability.faults --scenarios kill,restart --out build/reliability

- `kill`: SIGKILL tritonserver while clients load its models (every model runs inside that one process on
  the native backends: a crash there is the server's), then start it again on the same ports, as
  `python -m serving.server --restart`, Docker's restart policy or Kubernetes do. Records what the
  in-flight requests got, the downtime and what the clients saw; nothing may be answered wrongly.
- `restart`: stop the server (SIGTERM) and start it again on the same ports while clients that retry
  unreachable-server errors for up to `retry_s` keep sending (`restart_with_failover`: a second server
  takes the traffic). Every request must end in a correct answer or an explicit error, never a wrong
  answer; records the downtime and what the clients saw.
- `bad_artifacts`: a repository copy where one model's ONNX file is missing and another's is corrupt;
  the server still starts, serves the healthy model correctly, reports the broken ones (and the
  ensemble that needs them) through `unavailable_models()` with Triton's reason naming the file, and
  `repository.integrity.verify_repository` names both files.

- `rollout_killed`: `python -m serving.rollout` of a new nhits version, SIGKILLed while its canary answers,
  under load on the served models; the load must see only correct answers, version N+1 must not be in the
  repository, and the next server start must clear the dead writer's stage and serve version N.
- `concurrent_writers`: two processes commit into one repository at once, round after round (an importer's
  `repository.publish.Staging` and make export's prepare / commit): every commit must be whole and the
  manifest must name every file with its hash (no lost hash, no replayed commit).

The tests in tests/reliability/test_faults.py and tests/serving/ run these with short durations; the CLI
writes `<out>/faults.json` for RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from common.files import sha256_file
from models import spec
from reliability.load import ERROR, OK, Endpoint, Mix, Record, run_load, summarize
from reliability.reference import Workload, build_workload

log = logging.getLogger("reliability.faults")

# Which targets send work to a model (itself and the ensembles it is a step of).
USERS = {
    "nhits": ("nhits", "forecast"),
    "reservoir": ("reservoir", "forecast"),
    "forecast_blend": ("forecast_blend", "forecast"),
    "user_embedding": ("user_embedding", "recommend"),
    "similarity": ("similarity", "recommend"),
    "reservoir_stream": ("reservoir_stream",),
}
ENSEMBLE_STEPS = {"forecast": ("nhits", "reservoir", "forecast_blend"), "recommend": ("user_embedding", "similarity")}


def make_server(repo: Path, run_dir: Path, extra_args: list[str] | None = None, verify: bool = True):
    """A TritonServer on free loopback ports (`verify=False` skips the artifact hash check)."""
    from serving.server import TritonServer, free_port

    return TritonServer(
        repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        run_dir=run_dir,
        extra_args=list(extra_args or []),
        verify=verify,
    )


def copy_repo(src: Path, dest: Path, models: tuple[str, ...]) -> Path:
    """A repository with only `models` (configs and artifacts) copied from `src`, with its own integrity
    manifest (so a server that verifies artifacts before starting accepts it)."""
    from repository import integrity

    dest.mkdir(parents=True, exist_ok=True)
    for m in models:
        shutil.copytree(src / m, dest / m, dirs_exist_ok=True)
    integrity.write_manifest(dest)
    return dest


def _first_ok_after(records: list[Record], at: float, targets: tuple[str, ...]) -> float | None:
    done = [r.t + r.latency for r in records if r.outcome == OK and r.t > at and r.target in targets]
    return round(min(done) - at, 3) if done else None


def start_again(server, limit_s: float = 120.0) -> float:
    """server.start() on the same ports; returns the seconds spent waiting for them. TritonServer.start refuses a
    port it cannot bind, and a probe without SO_REUSEADDR cannot bind one whose closed connections are still in
    TIME_WAIT (up to 60 s after a stop under load) although tritonserver itself could (RELIABILITY.md)."""
    from serving.server import ServerError

    t = time.monotonic()
    while True:
        try:
            server.start(timeout=300)
            return round(time.monotonic() - t, 2) if time.monotonic() - t > 0.5 else 0.0
        except ServerError as exc:
            if "in use" not in str(exc) or time.monotonic() - t > limit_s:
                raise
            time.sleep(1.0)


def restart(
    server,
    workload: Workload,
    before_s: float = 2.0,
    after_s: float = 6.0,
    workers: int = 4,
    targets: tuple[str, ...] | None = None,
    production: bool = True,
    failover=None,
    retries: int = 6,
    retry_s: float = 0.0,
    kill: bool = False,
) -> dict:
    """Stop (SIGTERM; `kill`: SIGKILL, a crash) and start `server` (same ports) under load. `production`:
    clients.Client with `retries` and, when `failover` (a second running TritonServer) is given, failover to
    it; else bare calls retried for `retry_s`."""
    targets = targets or tuple(workload.targets)
    mix = Mix({t: 1.0 for t in targets}, http_share=0.25)
    endpoint = Endpoint(
        server.grpc_url,
        server.http_url,
        timeout_s=30.0,
        failover=((failover.grpc_url, failover.http_url),) if failover is not None else (),
        production=production,
        retries=retries,
    )
    t0 = time.monotonic()
    stop = threading.Event()
    box: dict = {}

    def go() -> None:  # runs until stopped `after_s` after the server is ready again
        box["run"] = run_load(workload, endpoint, 3600, workers, mix=mix, t0=t0, retry_s=retry_s, stop=stop)

    thread = threading.Thread(target=go, daemon=True, name="restart-load")
    thread.start()
    time.sleep(before_s)
    t_stop = time.monotonic() - t0
    if kill:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(30)
    else:
        server.stop()
    t_stopped = time.monotonic() - t0
    port_wait_s = start_again(server)
    t_ready = time.monotonic() - t0
    log.info("server stopped in %.2f s, ready again %.2f s after the stop", t_stopped - t_stop, t_ready - t_stop)
    time.sleep(after_s)
    stop.set()
    thread.join()
    records = box["run"].records
    across = [r for r in records if r.t <= t_ready and r.t + r.latency >= t_stop]
    return {
        "signal": "SIGKILL" if kill else "SIGTERM",
        "client": "clients.Client" if production else "tritonclient + retry",
        "failover": failover is not None,
        "targets": list(targets),
        "stop_at_s": round(t_stop, 3),
        "stop_took_s": round(t_stopped - t_stop, 3),
        "ready_again_after_s": round(t_ready - t_stop, 3),
        "waited_for_ports_s": port_wait_s,
        "requests_spanning_the_restart": summarize(across),
        "retried_requests": sum(1 for r in records if r.retries),
        "first_correct_answer_after_ready_s": _first_ok_after(records, t_ready, targets),
        "last_error_s": round(max((r.t + r.latency for r in records if r.outcome == ERROR), default=0.0), 3),
        "summary": summarize(records),
        "records": records,
    }


def bad_artifacts(
    src_repo: Path,
    work: Path,
    missing: str = "nhits",
    corrupt: str = "reservoir",
    healthy: str = "forecast_blend",
    workload: Workload | None = None,
) -> dict:
    """Start a server over a copy of `src_repo` with `missing`'s ONNX deleted and `corrupt`'s truncated."""
    from repository import integrity

    repo = copy_repo(src_repo, work / "repo", (missing, corrupt, healthy, "forecast"))  # with its manifest
    missing_file = spec.version_dir(missing, repo) / spec.ONNX_FP32
    corrupt_file = spec.version_dir(corrupt, repo) / spec.ONNX_FP32
    missing_file.unlink()
    data = corrupt_file.read_bytes()
    corrupt_file.write_bytes(data[: len(data) // 3] + b"\x00garbage" * 16)
    problems = integrity.verify_repository(repo)
    server = make_server(repo, work / "run", verify=False)
    t = time.monotonic()
    server.start(timeout=300)
    started_s = time.monotonic() - t
    try:
        unavailable = server.unavailable_models()
        answer = None
        if workload is not None and workload.cases.get(healthy):
            from reliability.load import Caller
            from reliability.reference import check

            caller = Caller(Endpoint(server.grpc_url, server.http_url))
            try:
                case = workload.cases[healthy][0]
                answer = check(healthy, caller.call("grpc", healthy, case.inputs), case.expected) or "correct"
            finally:
                caller.close()
        log_text = server.log_path.read_text(errors="replace")
    finally:
        server.stop()
    return {
        "missing_file": str(missing_file),
        "corrupt_file": str(corrupt_file),
        "server_started_s": round(started_s, 2),
        "unavailable_models": unavailable,
        "healthy_model": healthy,
        "healthy_model_answer": answer,
        "integrity_problems": problems,
        "log_names_files": {"missing": str(missing_file) in log_text, "corrupt": str(corrupt_file) in log_text},
        "repo": str(repo),
    }


def rollout_killed(src_repo: Path, work: Path, workload: Workload, workers: int = 4) -> dict:
    """Kill a rollout of nhits during its canary while clients load nhits and forecast; start the server again."""
    import subprocess

    from repository import integrity
    from serving import rollout
    from serving.server import TritonServer, free_port

    repo = copy_repo(src_repo, work / "repo", tuple(ENSEMBLE_STEPS["forecast"]) + ("forecast",))
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    server = TritonServer(repo, **ports, run_dir=work / "run", model_control="explicit")
    server.start(timeout=300)
    key = work / "admin.key"
    key.write_text(server.key)
    mix = Mix({"nhits": 1.0, "forecast": 1.0}, http_share=0.25)
    endpoint = Endpoint(server.grpc_url, server.http_url, timeout_s=30.0)
    stop = threading.Event()
    box: dict = {}
    thread = threading.Thread(
        target=lambda: box.update(run=run_load(workload, endpoint, 3600, workers, mix=mix, stop=stop)), daemon=True
    )
    thread.start()
    cmd = [sys.executable, "-m", "serving.rollout", "--model", "nhits", "--from", str(src_repo), "--repo", str(repo)]
    cmd += ["--url", server.grpc_url, "--admin-key-file", str(key), "--canary-rows", "40000"]
    control = rollout.Control(server.grpc_url, server.key)
    t0 = time.monotonic()
    try:
        time.sleep(1.0)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not rollout.canary_ready(control, "nhits") and proc.poll() is None:
            if time.monotonic() - t0 > 300:
                raise RuntimeError("the canary never loaded")
            time.sleep(0.05)
        killed_at = round(time.monotonic() - t0, 3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        in_repository = (repo / "nhits" / "2").exists()
        time.sleep(2.0)
    finally:
        stop.set()
        thread.join(120)
        control.close()
        server.stop()
    left = [p.name for p in repo.parent.glob(f".{repo.name}.stage*")]
    again = TritonServer(repo, **ports, run_dir=work / "run2")
    again.start(timeout=300)
    try:
        control = rollout.Control(again.grpc_url, again.key)
        try:
            served = control.versions("nhits")
        finally:
            control.close()
    finally:
        again.stop()
    return {
        "killed_by": "SIGKILL" if proc.returncode == -signal.SIGKILL else f"exit {proc.returncode} (not killed)",
        "killed_at_s": killed_at,
        "version_n_plus_1_in_repository_after_the_kill": in_repository,
        "stages_left_by_the_dead_rollout": left,
        "stages_after_the_next_start": [p.name for p in repo.parent.glob(f".{repo.name}.stage*")],
        "versions_served_after_the_next_start": served,
        "integrity_problems": integrity.verify_repository(repo),
        "summary": summarize(box["run"].records),
    }


def _writer(repo: str, name: str, rounds: int, how: str) -> None:
    """One writer of `concurrent_writers`: `rounds` whole versions of model folder `name`."""
    from repository import integrity, publish

    def model(root: Path, payload: bytes) -> None:
        version = root / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        (root / name / "config.pbtxt").write_text(f'name: "{name}"\n')
        artifact = version / spec.ONNX_FP32
        artifact.write_bytes(payload)
        integrity.record_path(artifact).write_text(json.dumps({"onnx_sha256": sha256_file(artifact)}))

    for i in range(rounds):
        payload = f"{name} round {i} ".encode() * 50_000
        if how == "importer":
            with publish.Staging(Path(repo)) as stage:
                model(stage.repo, payload)
                stage.commit([name])
        else:
            stage = publish.prepare(Path(repo), publish.stage_path(Path(repo)), [name])
            shutil.rmtree(stage / name)
            model(stage, payload)
            publish.commit(stage, Path(repo), [name])


def concurrent_writers(work: Path, rounds: int = 20) -> dict:
    """Two writers into one repository at once (an importer and make export's way), `rounds` commits each."""
    import multiprocessing

    from repository import integrity

    repo = work / "writers" / "model_repository"
    repo.mkdir(parents=True)
    integrity.write_manifest(repo)  # a repository with a manifest, as make export leaves it
    ctx = multiprocessing.get_context("spawn")
    t = time.monotonic()
    procs = [
        ctx.Process(target=_writer, args=(str(repo), n, rounds, how)) for n, how in (("a", "importer"), ("b", "export"))
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
    manifest = integrity.read_manifest(repo) or {}
    want = {f"{m}/{f}" for m in ("a", "b") for f in ("config.pbtxt", "1/model.onnx", "1/model.onnx.json")}
    last = {
        m: (repo / m / "1" / spec.ONNX_FP32).read_bytes() == f"{m} round {rounds - 1} ".encode() * 50_000 for m in "ab"
    }
    return {
        "writers": 2,
        "commits_each": rounds,
        "seconds": round(time.monotonic() - t, 2),
        "exit_codes": [p.exitcode for p in procs],
        "hashes_lost": sorted(want - set(manifest)),
        "integrity_problems": integrity.verify_repository(repo),
        "last_commit_of_each_in_place": last,
        "stages_left": [p.name for p in repo.parent.glob(".*stage*")],
    }


def _strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "records"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=Path("build/test/model_repository"))
    p.add_argument("--artifacts", type=Path, default=Path("build/test/artifacts"))
    p.add_argument(
        "--scenarios", default="bad_artifacts,kill,restart,rollout_killed,concurrent_writers", help="comma-separated"
    )
    p.add_argument("--model", default="nhits", help="model whose users carry the load (with the forecast ensemble)")
    p.add_argument("--seconds", type=float, default=10.0, help="load after each fault, s")
    p.add_argument("--out", type=Path, default=Path("build/reliability"))
    args = p.parse_args(argv)
    if args.model not in USERS:
        p.error(f"--model: choose from {', '.join(USERS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scenarios = args.scenarios.split(",")
    work = args.out / "faults"
    shutil.rmtree(work, ignore_errors=True)
    models = tuple({args.model, *ENSEMBLE_STEPS["forecast"], "forecast"})
    targets = tuple(t for t in (*models, "recommend") if t in USERS.get(args.model, ()) or t in models)
    loads = {"bad_artifacts", "kill", "restart", "rollout_killed"} & set(scenarios)
    workload = build_workload(args.repo, args.artifacts, n=32, targets=targets) if loads else None
    results: dict = {
        "command": " ".join(["python -m reliability.faults", *(argv if argv is not None else sys.argv[1:])])
    }
    if "bad_artifacts" in scenarios:
        results["bad_artifacts"] = bad_artifacts(args.repo, work / "bad", workload=workload)
    if "kill" in scenarios or "restart" in scenarios:
        repo = copy_repo(args.repo, work / "repo", models)
        server = make_server(repo, work / "run")
        server.start(timeout=300)
        try:
            if "kill" in scenarios:
                results["kill"] = _strip(restart(server, workload, after_s=args.seconds, kill=True))
            if "restart" in scenarios:
                results["restart_single_server"] = _strip(restart(server, workload, after_s=args.seconds))
                backup = make_server(repo, work / "run-backup")
                backup.start(timeout=300)
                try:
                    stateless = tuple(t for t in workload.targets if t != "reservoir_stream")
                    results["restart_with_failover"] = _strip(
                        restart(server, workload, after_s=args.seconds, failover=backup, targets=stateless)
                    )
                finally:
                    backup.stop()
        finally:
            server.stop()
    if "rollout_killed" in scenarios:
        results["rollout_killed"] = rollout_killed(args.repo, work / "rollout", workload)
    if "concurrent_writers" in scenarios:
        results["concurrent_writers"] = concurrent_writers(work)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "faults.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps(results, indent=2, default=str))
    print(f"wrote {path}")
    wrong = sum(r.get("summary", {}).get("wrong", 0) for r in results.values() if isinstance(r, dict))
    writers = results.get("concurrent_writers", {})
    lost = writers.get("hashes_lost") or writers.get("integrity_problems") or any(writers.get("exit_codes") or [])
    rolled = results.get("rollout_killed", {})
    leaked = rolled and (rolled["version_n_plus_1_in_repository_after_the_kill"] or rolled["integrity_problems"])
    return 1 if wrong or lost or leaked else 0


if __name__ == "__main__":
    sys.exit(main())
