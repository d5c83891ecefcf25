"""python -m serving.rollout against a real Triton in explicit model-control mode, under a closed loop of real
requests: two rollouts that succeed (a retrained nhits, a similarity catalog with new items) and two that must
fail and leave version N serving (a user table that lost users: the canary sees sentinels; a file the backend
cannot load). Every request of the loop must succeed with version N's or version N+1's answer.

The next versions are real exports: a changed checkpoint through export.onnx_export and calibration.calibrate,
into a repository of their own, as `make export REPO=...` writes them.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from common.files import sha256_file
from models import registry, spec
from reliability.load import ERROR, OK, WRONG, Endpoint, Mix, run_load, summarize
from reliability.reference import Case, Reference, Workload
from repository import integrity
from repository.layout import copy_configs, served_file
from serving import rollout
from serving.server import TritonServer, free_port
from tests.conftest import snapshot

pytestmark = pytest.mark.slow

MODELS = ("nhits", "reservoir", "forecast_blend", "similarity", "user_embedding")
SERVED = (*MODELS, "forecast", "recommend")
NEW_ITEMS = 64
KEPT_USERS = 50  # the broken user table: ids >= 50 are gone


def export_next(tmp: Path, artifacts: Path, model: str, edit) -> Path:
    """A repository with a new version of `model`: its checkpoint edited, exported and calibrated."""
    from calibration import calibrate
    from export import onnx_export

    a2, r2 = tmp / f"{model}-artifacts", tmp / f"{model}-export"
    shutil.copytree(artifacts / "data", a2 / "data")
    shutil.copytree(artifacts / "checkpoints", a2 / "checkpoints")
    path = registry.checkpoint_path(a2, model)
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt, a2)
    torch.save(ckpt, path)
    copy_configs(spec.MODEL_REPOSITORY, r2)
    assert onnx_export.main(["--artifacts", str(a2), "--repo", str(r2), "--models", model]) == 0
    assert calibrate.main(["--artifacts", str(a2), "--repo", str(r2), "--models", model]) == 0
    return r2


def _retrained(ckpt, _artifacts) -> None:
    last_bias = [k for k in ckpt["state_dict"] if k.endswith("bias")][-1]
    ckpt["state_dict"][last_bias] = ckpt["state_dict"][last_bias] + 0.05


def _new_items(ckpt, artifacts: Path) -> None:
    """New catalog items close to the test users (their vectors plus noise): they enter those users' top-10."""
    ids = registry.example_inputs("user_embedding", artifacts, "test", NEW_ITEMS)[0].reshape(-1)
    users = torch.from_numpy(np.load(artifacts / "data" / "users.npy"))[ids]
    noise = 0.05 * torch.randn(users.shape, generator=torch.Generator().manual_seed(3))
    new = torch.nn.functional.normalize(users + noise, dim=1)  # (NEW_ITEMS, D)
    catalog_t = ckpt["state_dict"]["catalog_t"]  # (D, N)
    ckpt["state_dict"]["catalog_t"] = torch.cat([catalog_t, new.T], dim=1).contiguous()
    ckpt["config"]["n_items"] += NEW_ITEMS


def _lost_users(ckpt, artifacts: Path) -> None:
    """A user table exported from a users file that lost people: consistent with itself, not with the ids served."""
    ckpt["state_dict"]["table"] = ckpt["state_dict"]["table"][:KEPT_USERS].clone()
    ckpt["config"]["n_users"] = KEPT_USERS
    users = artifacts / "data" / "users.npy"
    np.save(users, np.load(users)[:KEPT_USERS])


@pytest.fixture(scope="module")
def exports(tmp_path_factory, artifacts: Path) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("rollout-exports")
    out = {
        "nhits": export_next(tmp, artifacts, "nhits", _retrained),
        "similarity": export_next(tmp, artifacts, "similarity", _new_items),
        "user_embedding": export_next(tmp, artifacts, "user_embedding", _lost_users),
    }
    broken = tmp / "nhits-unloadable"  # recorded hash and all, but cut short: not an ONNX file anything can load
    shutil.copytree(out["nhits"] / "nhits", broken / "nhits")
    onnx_path = broken / "nhits" / "1" / spec.ONNX_FP32
    onnx_path.write_bytes(onnx_path.read_bytes()[:4096])
    record = integrity.record_path(onnx_path)
    record.write_text(json.dumps({**json.loads(record.read_text()), "onnx_sha256": sha256_file(onnx_path)}))
    out["unloadable"] = broken
    return out


@pytest.fixture(scope="module")
def served_repo(tmp_path_factory, repo: Path) -> Path:
    """A repository of the models under test, copied from the small export, with its own manifest."""
    dest = tmp_path_factory.mktemp("rollout") / "model_repository"
    dest.mkdir()
    for m in SERVED:
        shutil.copytree(repo / m, dest / m)
    integrity.write_manifest(dest)
    return dest


@pytest.fixture(scope="module")
def explicit_server(served_repo: Path, tmp_path_factory):
    server = TritonServer(
        served_repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        run_dir=tmp_path_factory.mktemp("rollout-run"),
        model_control="explicit",
    )
    server.start(timeout=180)
    yield server
    server.stop()


def workload(served_repo: Path, artifacts: Path, exports: dict[str, Path]) -> Workload:
    """Requests for every served target, each with version N's answer and the answer after the rollouts."""
    old = Reference(served_repo, MODELS)
    new = Reference(served_repo, MODELS)
    for m in ("nhits", "similarity"):
        new.sessions[m] = Reference(exports[m], (m,)).sessions[m]
    rng = np.random.default_rng(5)
    wl = Workload()
    sources = {
        "nhits": "nhits",
        "forecast": "nhits",
        "similarity": "similarity",
        "user_embedding": "user_embedding",
        "recommend": "user_embedding",
    }
    for target, source in sources.items():
        tensors = registry.example_inputs(source, artifacts, "test", 64)
        pool = {t.name: x.numpy() for t, x in zip(spec.MODELS[source].inputs, tensors, strict=True)}
        cases = []
        for _ in range(48):
            idx = rng.choice(64, size=int(rng.choice([1, 1, 2, 4, 8])), replace=False)
            inputs = {k: np.ascontiguousarray(v[idx]) for k, v in pool.items()}
            cases.append(Case(target, inputs, old.answer(target, inputs), (new.answer(target, inputs),)))
        wl.cases[target] = cases
    return wl


def test_rollouts_under_load_lose_no_request_and_a_failed_canary_leaves_version_n_serving(
    explicit_server, served_repo, artifacts, exports
):
    wl = workload(served_repo, artifacts, exports)
    control = rollout.Control(explicit_server.grpc_url, explicit_server.key)
    stop = threading.Event()
    box = {}

    def load() -> None:
        endpoint = Endpoint(explicit_server.grpc_url, explicit_server.http_url, timeout_s=30)
        box["run"] = run_load(wl, endpoint, seconds=600, workers=4, mix=Mix.uniform(wl), stop=stop)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    outcomes, refused, states = {}, {}, {}
    try:
        time.sleep(2.0)
        for model in ("nhits", "similarity"):
            outcomes[model] = rollout.rollout(control, served_repo, model, exports[model])
            time.sleep(1.0)
        for key, model in (("user_embedding", "user_embedding"), ("unloadable", "nhits")):
            before = snapshot(served_repo)
            with pytest.raises(rollout.RolloutError) as info:
                rollout.rollout(control, served_repo, model, exports[key])
            refused[key] = str(info.value)
            states[key] = (snapshot(served_repo) == before, control.versions(model))
            time.sleep(1.0)
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(120)
        control.close()
    run = box["run"]
    summary = summarize(run.records)
    assert run.count(ERROR) == 0 and run.count(WRONG) == 0, summary
    assert run.count(OK) > 200, summary
    for target in ("nhits", "forecast", "similarity", "recommend"):  # answered by N, then by N+1 after its rollout
        matched = {r.matched for r in run.records if r.target == target}
        assert matched == {0, 1}, (target, matched)
    for model, outcome in outcomes.items():
        assert outcome.ok and (outcome.from_version, outcome.to_version) == (1, 2)
        assert outcome.steps["canary"]["max_rel_err"] <= rollout.CANARY_RTOL
        assert sorted(p.name for p in (served_repo / model).iterdir() if p.name.isdigit()) == ["1", "2"]
    # the cached ensemble moved to a version of its own (its cache is keyed by version), the other one did not
    assert outcomes["similarity"].steps["ensembles"] == {
        "recommend": {"from_version": 1, "to_version": 2, "why": "response cache keyed by version"}
    }
    assert outcomes["nhits"].steps["ensembles"] == {}
    assert "sentinel" in refused["user_embedding"] and "canary rows" in refused["user_embedding"]
    assert "not a readable ONNX file" in refused["unloadable"]
    assert states["user_embedding"] == (True, [1])  # repository byte-identical, version N serving
    assert states["unloadable"] == (True, [2])
    assert integrity.verify_repository(served_repo) == []
    assert [served_file(served_repo, m).parent.name for m in MODELS if m != "reservoir"] == ["2", "1", "2", "1"]
    by_version = {t: [sum(r.matched == i for r in run.records if r.target == t) for i in (0, 1)] for t in wl.cases}
    print(
        f"\nrollout under load: {summary['requests']} requests in {run.seconds:.1f} s, {summary['errors']} errors, "
        f"{summary['wrong']} wrong; answers [N, N+1] per target {by_version}; p50 {summary['latency_ms'].get('p50')} "
        f"p99 {summary['latency_ms'].get('p99')} ms; swaps {[o.steps['swap']['seconds'] for o in outcomes.values()]} s"
    )


def test_a_server_without_model_control_refuses_the_rollout_before_anything_is_written(triton, repo, exports):
    control = rollout.Control(triton.grpc_url, triton.key)
    before = snapshot(repo)
    try:
        with pytest.raises(rollout.RolloutError, match="explicit mode"):
            rollout.rollout(control, repo, "nhits", exports["nhits"])
    finally:
        control.close()
    assert snapshot(repo) == before


def test_the_command_line_refuses_an_ensemble_with_one_line(explicit_server, served_repo, capsys, tmp_path):
    (tmp_path / "recommend" / "1").mkdir(parents=True)
    key = tmp_path / "key"
    key.write_text(explicit_server.key)
    argv = ["--model", "recommend", "--from", str(tmp_path), "--repo", str(served_repo)]
    argv += ["--url", explicit_server.grpc_url, "--admin-key-file", str(key)]
    assert rollout.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ensemble" in err[0], err


def test_a_rollout_killed_during_its_canary_leaves_version_n_for_the_next_start(repo, exports, tmp_path):
    """SIGKILL `python -m serving.rollout` while its canary is loaded and answering: version N+1 never entered the
    repository (it is staged beside it until the canary passed), and the next server start, which clears what the
    dead writer left, serves version N with every file verified."""
    import os
    import signal
    import subprocess
    import sys

    from reliability.faults import copy_repo

    models = ("nhits",)
    work = copy_repo(repo, tmp_path / "model_repository", models)
    server = TritonServer(
        work,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        run_dir=tmp_path / "run",
        model_control="explicit",
    )
    server.start(timeout=180)
    before = snapshot(work)
    key = tmp_path / "admin.key"
    key.write_text(server.key)
    cmd = [sys.executable, "-m", "serving.rollout", "--model", "nhits", "--from", str(exports["nhits"])]
    cmd += ["--repo", str(work), "--url", server.grpc_url, "--admin-key-file", str(key), "--canary-rows", "40000"]
    proc = subprocess.Popen(cmd, cwd=spec.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    control = rollout.Control(server.grpc_url, server.key)
    try:
        deadline = time.monotonic() + 120
        while not rollout.canary_ready(control, "nhits"):
            assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
            assert time.monotonic() < deadline, "the canary never loaded"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the canary is loaded: its rows are going through the server
        proc.wait(30)
        out = proc.stdout.read().decode()
        assert proc.returncode == -signal.SIGKILL, f"the rollout ended by itself before the kill: {out[-2000:]}"
        assert not (work / "nhits" / "2").exists(), "version N+1 entered the repository before its canary passed"
        assert snapshot(work) == before
    finally:
        control.close()
        server.stop()
    assert list(work.parent.glob(f".{work.name}.stage*")), "the killed rollout left its stage (the next start's job)"
    again = TritonServer(
        work, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), run_dir=tmp_path / "run2"
    )
    again.start(timeout=180)  # verifies every file first
    try:
        control = rollout.Control(again.grpc_url, again.key)
        try:
            assert control.versions("nhits") == [1]
        finally:
            control.close()
    finally:
        again.stop()
    assert not list(work.parent.glob(f".{work.name}.stage*")), "the start cleared what the dead rollout left"
    assert integrity.verify_repository(work) == []
