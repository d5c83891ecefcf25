"""The torch_py backend and its repository: configs agree with the spec, and a real Triton serves it on CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models import registry, spec
from perf.gpu import report, repository, serve, weights
from serving.repository import load_config, tensors
from serving.server import free_port

SMALL = {"n_items": 2000, "n_users": 3000}


@pytest.mark.parametrize("model", repository.BASE)
def test_overlay_gpu_config_matches_the_spec_and_runs_torch_py_on_the_gpu(model):
    cfg = load_config(repository.OVERLAY / model / "configs" / f"{repository.CONFIG_GPU}.pbtxt")
    want = spec.MODELS[model]
    assert cfg.name == model and cfg.backend == "torch_py"
    assert cfg.max_batch_size == want.max_batch_size
    assert tensors(cfg.input) == {t.name: (t.dtype, t.dims) for t in want.inputs}
    assert tensors(cfg.output) == {t.name: (t.dtype, t.dims) for t in want.outputs}
    assert [g.kind for g in cfg.instance_group] == [g.KIND_GPU for g in cfg.instance_group]
    assert not cfg.response_cache.enable
    assert cfg.parameters["cuda_graphs"].string_value == "true"


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory):
    out = tmp_path_factory.mktemp("torch_repo")
    sources = repository.assemble(
        out, None, ("nhits", "user_embedding", "similarity", "recommend"), synthesize=True, **SMALL
    )
    return out, sources


def test_assembled_repository_has_both_configs_checkpoints_and_cache_free_ensembles(small_repo):
    out, sources = small_repo
    assert set(sources) == {"nhits", "user_embedding", "similarity"}
    for model in sources:
        gpu = load_config(out / model / "configs" / f"{repository.CONFIG_GPU}.pbtxt")
        cpu = load_config(out / model / "configs" / f"{repository.CONFIG_CPU}.pbtxt")
        assert gpu.instance_group[0].kind == gpu.instance_group[0].KIND_GPU
        assert cpu.instance_group[0].kind == cpu.instance_group[0].KIND_CPU
        assert cpu.parameters["cuda_graphs"].string_value == "false"
        assert cpu.parameters["project_root"].string_value == str(spec.ROOT)
        assert registry.load_model(model, out / model / "1") is not None
    ens = load_config(out / "recommend" / "config.pbtxt")
    assert ens.platform == "ensemble" and not ens.response_cache.enable
    assert registry.load_model("user_embedding", out / "user_embedding" / "1").table.shape[0] == SMALL["n_users"]


def test_an_ensemble_without_its_steps_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs"):
        repository.assemble(tmp_path, None, ("similarity", "recommend"), synthesize=True, **SMALL)


def test_perf_analyzer_csv_is_parsed(tmp_path):
    path = tmp_path / "pa.csv"
    path.write_text(
        "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
        "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
        "Avg latency,request/response,response wait\n"
        "1,241.482,7,538,521,26,2731,295,3,3996,6288,7186,9345,4124,10,4077\n"
    )
    got = serve.parse_csv(path)
    assert got["throughput_per_s"] == pytest.approx(241.482)
    assert got["latency_us"] == {"p50": 3996, "p90": 6288, "p95": 7186, "p99": 9345, "avg": 4124}
    assert got["server_us"] == {"queue": 521, "compute_input": 26, "compute_infer": 2731, "compute_output": 295}


@pytest.mark.slow
def test_torch_backend_serves_checked_outputs_on_a_real_triton_and_rejects_bad_ids(tmp_path):
    served = ("nhits", "user_embedding")  # two python-backend stubs: each imports torch, seconds on CI cores
    repository.assemble(tmp_path / "repo", None, served, synthesize=True, **SMALL)
    server = serve.GpuTritonServer(
        tmp_path / "repo",
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        config_name=repository.CONFIG_CPU,
        run_dir=tmp_path / "run",
    )
    server.start(timeout=240)
    try:
        assert server.unavailable_models() == {}
        mods = weights.load_all(None, served, where=lambda name: tmp_path / "repo" / name / "1")[0]
        checks = serve.check(server, mods, "fp32")
        assert [c["status"] for c in checks] == ["ok", "ok"], checks
        assert all(c["rel_err"] < 1e-5 and c["rows"] == 16 for c in checks)
        bad = np.array([[SMALL["n_users"]]], dtype=np.int64)
        with pytest.raises(RuntimeError, match=r"out of range \[0, 3000\)"):
            serve.http_infer(server.http_url, "user_embedding", {"user_id": bad}, ["embedding"])
    finally:
        server.stop()


@pytest.mark.slow
def test_the_cpu_serving_recipe_measures_with_perf_analyzer_and_the_report_reads_it(tmp_path):
    out = tmp_path / "serving.json"
    argv = ["--synthesize", "--n-items", "2000", "--n-users", "3000", "--config", "torch_cpu", "--quick"]
    argv += ["--models", "nhits", "--out", str(out), "--repo-out", str(tmp_path / "repo"), "--run-dir", str(tmp_path)]
    assert serve.main(argv) == 0
    doc = json.loads(out.read_text())
    (rec,) = doc["scenarios"]
    assert rec["status"] == "ok" and rec["throughput_per_s"] > 0
    assert 0 < rec["latency_us"]["p50"] <= rec["latency_us"]["p99"]
    assert set(rec["server_us"]) == set(serve.SERVER_US)
    assert (tmp_path / "pa_nhits_b1_c1.csv").is_file() and doc["checks"][0]["status"] == "ok"
    assert "the serving JSON given is a CPU run" in report.render(None, doc)
