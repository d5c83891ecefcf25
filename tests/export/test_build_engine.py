"""The TensorRT stage where TensorRT cannot run: profiles from the configs, provenance checks, and the
builder's call sequence against a stand-in `tensorrt` module (the real one only exists in the TensorRT
container; this checks our code path, not TensorRT)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from unittest import mock

import pytest

from export import build_engine, common
from export.common import CliError
from models import spec


def test_the_profile_comes_from_the_gpu_config() -> None:
    # nhits: preferred_batch_size [64, 256], max_batch_size 1024 in model_repository/nhits/config.pbtxt
    lo, opt, hi = build_engine.batch_sizes("nhits", spec.MODEL_REPOSITORY)
    assert (lo, hi) == (1, spec.MODELS["nhits"].max_batch_size)
    assert 1 <= opt <= hi


def test_the_streaming_profile_reads_the_sequence_batcher(tmp_path: Path) -> None:
    cfg = tmp_path / "reservoir_stream" / "config.pbtxt"
    cfg.parent.mkdir()
    cfg.write_text(
        'name: "reservoir_stream"\nmax_batch_size: 128\nsequence_batching { oldest { preferred_batch_size: [ 16, 32 ] } }\n'
    )
    assert build_engine.batch_sizes("reservoir_stream", tmp_path) == (1, 32, 128)


def test_without_a_config_the_profile_falls_back_to_the_spec(tmp_path: Path) -> None:
    hi = spec.MODELS["similarity"].max_batch_size
    assert build_engine.batch_sizes("similarity", tmp_path) == (1, hi, hi)


def test_provenance_problems_are_listed_before_triton_sees_the_plan(tmp_path: Path, monkeypatch) -> None:
    plan = tmp_path / spec.PLAN_FP16
    assert "does not exist" in build_engine.check_plan_provenance(plan)[0]
    plan.write_bytes(b"plan")
    assert "provenance" in build_engine.check_plan_provenance(plan)[0]
    onnx_file = tmp_path / spec.ONNX_FP32
    onnx_file.write_bytes(b"onnx")
    prov = {
        "onnx": spec.ONNX_FP32,
        "onnx_sha256": common.sha256_file(onnx_file),
        "plan_sha256": common.sha256_file(plan),
        "tensorrt_version": "10.5.0",
        "compute_capability": "8.0",
    }
    build_engine.provenance_path(plan).write_text(json.dumps(prov))
    monkeypatch.setattr(build_engine, "gpu_info", lambda: None)

    monkeypatch.setattr(build_engine, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.5.0"))
    assert build_engine.check_plan_provenance(plan) == []

    monkeypatch.setattr(build_engine, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.6.0"))
    assert build_engine.check_plan_provenance(plan) == [
        "plan built with TensorRT 10.5.0, installed 10.6.0: rebuild the plan"
    ]

    def missing():
        raise ModuleNotFoundError("No module named 'tensorrt'")

    monkeypatch.setattr(build_engine, "import_tensorrt", missing)
    assert "TensorRT is not importable" in build_engine.check_plan_provenance(plan)[0]

    monkeypatch.setattr(build_engine, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.5.0"))
    monkeypatch.setattr(build_engine, "gpu_info", lambda: {"name": "H100", "compute_capability": "9.0"})
    onnx_file.write_bytes(b"changed")
    problems = build_engine.check_plan_provenance(plan)
    assert any("compute capability 8.0" in p for p in problems)
    assert any("changed since the plan was built" in p for p in problems)


def fake_tensorrt(serialized: bytes | None) -> mock.MagicMock:
    trt = mock.MagicMock(name="tensorrt")
    trt.__version__ = "10.5.0"
    network = trt.Builder.return_value.create_network.return_value
    network.num_inputs, network.num_outputs, network.num_layers = 1, 1, 0
    network.get_input.return_value.name = "window"
    network.get_input.return_value.shape = (-1, spec.INPUT_SIZE)
    trt.OnnxParser.return_value.parse_from_file.return_value = True
    trt.Builder.return_value.build_serialized_network.return_value = serialized
    config = trt.Builder.return_value.create_builder_config.return_value
    config.get_timing_cache.return_value.serialize.return_value = b"cache"
    return trt


def test_plans_and_provenance_are_written_with_the_documented_calls(repo: Path, tmp_path: Path, monkeypatch) -> None:
    work = tmp_path / "repo"
    vdir = spec.version_dir("nhits", work)
    vdir.mkdir(parents=True)
    for f in (spec.ONNX_FP32, spec.ONNX_INT8):
        (vdir / f).write_bytes((spec.version_dir("nhits", repo) / f).read_bytes())
    trt = fake_tensorrt(b"serialized-plan")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    gpu = {"name": "NVIDIA H100", "compute_capability": "9.0", "driver": "550"}
    builder = build_engine.EngineBuilder(tmp_path / "cache" / build_engine.TIMING_CACHE)
    result = build_engine.build_model(builder, "nhits", work, "abc", gpu)

    assert (vdir / spec.PLAN_FP16).read_bytes() == b"serialized-plan"
    assert (tmp_path / "cache" / build_engine.TIMING_CACHE).read_bytes() == b"cache"
    trt.Builder.return_value.create_network.assert_called_with(0)
    profile = trt.Builder.return_value.create_optimization_profile.return_value
    lo, opt, hi = build_engine.batch_sizes("nhits", work)
    profile.set_shape.assert_called_with("window", (lo, spec.INPUT_SIZE), (opt, spec.INPUT_SIZE), (hi, spec.INPUT_SIZE))
    config = trt.Builder.return_value.create_builder_config.return_value
    flags = [c.args[0] for c in config.set_flag.call_args_list]
    assert flags == [trt.BuilderFlag.FP16, trt.BuilderFlag.FP16, trt.BuilderFlag.INT8]  # INT8 only for Q/DQ
    int8 = json.loads(build_engine.provenance_path(vdir / spec.PLAN_INT8).read_text())
    assert int8["precision"] == "int8+fp16"
    assert int8["calibration_manifest_sha256"] == "abc"
    assert int8["onnx_sha256"] == common.sha256_file(vdir / spec.ONNX_INT8)
    assert result[spec.PLAN_FP16]["tensorrt_version"] == "10.5.0"
    monkeypatch.setattr(build_engine, "gpu_info", lambda: gpu)
    assert build_engine.check_plan_provenance(vdir / spec.PLAN_INT8) == []


def test_a_failed_build_is_an_error_naming_the_plan(tmp_path: Path, monkeypatch, repo: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(None))
    builder = build_engine.EngineBuilder(tmp_path / build_engine.TIMING_CACHE)
    onnx_path = spec.version_dir("nhits", repo) / spec.ONNX_FP32
    with pytest.raises(CliError, match="failed to build"):
        builder.build(onnx_path, tmp_path / spec.PLAN_FP16, (1, 8, 16), int8=False)
    assert not (tmp_path / spec.PLAN_FP16).exists()


def test_parser_errors_are_logged_one_by_one(tmp_path: Path, monkeypatch, caplog, repo: Path) -> None:
    trt = fake_tensorrt(b"x")
    parser = trt.OnnxParser.return_value
    parser.parse_from_file.return_value = False
    parser.num_errors = 2
    parser.get_error.side_effect = lambda i: f"error {i}"
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    builder = build_engine.EngineBuilder(tmp_path / build_engine.TIMING_CACHE)
    with pytest.raises(CliError, match="could not parse"):
        builder.parse(spec.version_dir("nhits", repo) / spec.ONNX_FP32)
    assert [r.getMessage().split(": ")[-1] for r in caplog.records if r.levelname == "ERROR"] == ["error 0", "error 1"]


def test_the_module_imports_without_tensorrt() -> None:
    assert "tensorrt" not in build_engine.__dict__
    assert "polygraphy run" in build_engine.__doc__


def test_similarity_scores_are_kept_fp32_up_to_the_top_k(tmp_path: Path, monkeypatch) -> None:
    trt = fake_tensorrt(b"x")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)

    def layer(name: str, kind) -> mock.MagicMock:
        lay = mock.MagicMock(num_outputs=1, type=kind)
        lay.name = name
        lay.get_output.return_value.dtype = trt.float32
        return lay

    layers = [
        layer("/ReduceL2", trt.LayerType.REDUCE),
        layer("/MatMul", trt.LayerType.MATRIX_MULTIPLY),
        layer("/TopK", trt.LayerType.TOPK),
        layer("rerank/Gather", trt.LayerType.GATHER),
    ]
    network = mock.MagicMock(num_layers=len(layers))
    network.get_layer.side_effect = layers.__getitem__
    builder = build_engine.EngineBuilder(tmp_path / build_engine.TIMING_CACHE)
    assert builder.constrain_scores_to_fp32(network) == ["/MatMul", "/TopK", "rerank/Gather"]
    layers[1].set_output_type.assert_called_once_with(0, trt.float32)
    layers[0].set_output_type.assert_not_called()
    network.num_layers = 1  # no top-k: nothing constrained
    assert builder.constrain_scores_to_fp32(network) == []
