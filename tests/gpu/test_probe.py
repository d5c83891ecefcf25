"""perf.gpu_probe on CPU in --reduced mode: same code paths and JSON schema as on a GPU, in seconds."""

from __future__ import annotations

import copy

import pytest
import torch

from perf import gpu_probe
from perf.gpu import schema

TOPK_MODELS = ("similarity", "recommend")  # the models that return top-k ids


def test_reduced_cpu_probe_writes_json_that_matches_the_schema(probe_doc):
    assert schema.errors(probe_doc, schema.PROBE_SCHEMA) == []
    assert probe_doc["mode"] == "reduced"
    assert probe_doc["machine"]["device"] == "cpu"
    assert probe_doc["machine"]["gpu"] is None


def test_every_model_batch_and_variant_has_a_row(probe_doc):
    rows = {(r["model"], r["batch"], r["variant"]) for r in probe_doc["results"]}
    for model in gpu_probe.MODELS:
        for batch in gpu_probe.REDUCED.batches:
            for variant in gpu_probe.VARIANTS:
                assert (model, batch, variant) in rows


def test_gpu_only_variants_are_skipped_with_a_reason_not_timed(probe_doc):
    for r in probe_doc["results"]:
        if r["mode"] == "graph":
            assert r["status"] == "skipped" and "CUDA" in r["reason"]
        if r["status"] == "skipped":
            assert r["reason"] and r["latency_ms"] is None and r["throughput_per_s"] is None


def test_eager_fp32_rows_are_timed_and_agree_with_the_float64_reference(probe_doc):
    eager = [r for r in probe_doc["results"] if r["variant"] == "eager/fp32"]
    assert len(eager) == len(gpu_probe.MODELS) * len(gpu_probe.REDUCED.batches)
    for r in eager:
        assert r["status"] == "ok", r
        assert r["timer"] == "perf_counter"
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["median"] <= lat["p95"] <= lat["p99"]
        assert r["throughput_per_s"] > 0 and r["iters"] >= gpu_probe.REDUCED.min_iters
        assert r["rel_err"] < 1e-5
        assert r["topk_agreement"] == (1.0 if r["model"] in TOPK_MODELS else None)
        assert r["floor"]["floor_ms"] > 0 and r["floor"]["fraction"] > 0


def test_ceilings_are_measured(probe_doc):
    c = probe_doc["ceilings"]
    assert c["copy_gbps"] > 0 and all(v > 0 for v in c["matmul_tflops"].values())


def test_schema_rejects_a_broken_document(probe_doc):
    broken = copy.deepcopy(probe_doc)
    del broken["ceilings"]
    broken["results"][0]["status"] = "fine"
    broken["results"][1]["batch"] = "one"
    problems = schema.errors(broken, schema.PROBE_SCHEMA)
    assert any("ceilings" in p for p in problems)
    assert any("results[0].status" in p for p in problems)
    assert any("results[1].batch" in p for p in problems)
    with pytest.raises(ValueError, match="does not match its schema"):
        schema.validate(broken, schema.PROBE_SCHEMA)


def test_the_small_validator_agrees_with_jsonschema(probe_doc):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(probe_doc, schema.PROBE_SCHEMA)
    broken = copy.deepcopy(probe_doc)
    broken["results"][0]["latency_ms"] = "fast"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema.PROBE_SCHEMA)
    assert schema.errors(broken, schema.PROBE_SCHEMA)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where CUDA is absent")
def test_asking_for_cuda_without_cuda_fails_with_a_pointer(capsys):
    with pytest.raises(SystemExit):
        gpu_probe.parse_args(["--device", "cuda"])
    assert "--device cpu --reduced" in capsys.readouterr().err


def test_floor_is_the_larger_of_bytes_and_flops_time():
    ceilings = {"copy_gbps": 1000.0, "matmul_tflops": {"fp32": 10.0, "fp16": 100.0, "bf16": 100.0}}
    f = gpu_probe.floor(1e9, 1e12, "fp32", ceilings, median_ms=200.0)  # 1 ms of bytes, 100 ms of FLOPs
    assert f["bound"] == "compute" and f["floor_ms"] == pytest.approx(100.0) and f["fraction"] == pytest.approx(0.5)
    f = gpu_probe.floor(1e9, 1e12, "fp16w", ceilings, median_ms=20.0)
    assert f["floor_ms"] == pytest.approx(10.0) and f["bound"] == "compute"
    f = gpu_probe.floor(1e11, 1e9, "amp_bf16", ceilings, median_ms=None)
    assert f["bound"] == "memory" and f["floor_ms"] == pytest.approx(100.0) and f["fraction"] is None
