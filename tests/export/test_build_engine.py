"""The TensorRT stage where TensorRT cannot run: profiles from the configs, provenance checks, and the
builder's call sequence against stand-in `tensorrt` and `modelopt.onnx.autocast` modules (the real ones only
exist in the TensorRT container; this checks our code path against TensorRT 11's documented API, not TensorRT)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from unittest import mock

import pytest

from common.cli import CliError
from common.files import sha256_file
from export import build_engine
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
        "onnx_sha256": sha256_file(onnx_file),
        "plan_sha256": sha256_file(plan),
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
    trt.__version__ = "11.4.0.106"
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
    autocast = fake_autocast(monkeypatch)
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
    config.set_flag.assert_not_called()  # TensorRT 11 has no precision flags: the ONNX types decide
    parsed = [c.args[0] for c in trt.OnnxParser.return_value.parse_from_file.call_args_list]
    fp16_file = tmp_path / "cache" / "nhits.model.fp16.onnx"
    assert parsed == [str(fp16_file), str(vdir / spec.ONNX_INT8)]  # FP16 through AutoCast, INT8 as its Q/DQ say
    assert autocast.calls == [
        {
            "onnx_path": str(vdir / spec.ONNX_FP32),
            "low_precision_type": "fp16",
            "keep_io_types": True,
            "nodes_to_exclude": [],
            "op_types_to_exclude": [],
        }
    ]
    int8 = json.loads(build_engine.provenance_path(vdir / spec.PLAN_INT8).read_text())
    assert int8["precision"] == "int8 (Q/DQ) + fp32"
    assert int8["calibration_manifest_sha256"] == "abc"
    assert int8["onnx_sha256"] == sha256_file(vdir / spec.ONNX_INT8)
    assert result[spec.PLAN_FP16]["tensorrt_version"] == "11.4.0.106"
    assert result[spec.PLAN_FP16]["precision"] == "fp16 + fp32 (AutoCast)"
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


def fake_autocast(monkeypatch) -> types.SimpleNamespace:
    """A stand-in for modelopt.onnx.autocast that records its calls and returns the model unchanged."""
    import onnx

    calls: list[dict] = []

    def convert_to_mixed_precision(**kwargs):
        calls.append(kwargs)
        return onnx.load(kwargs["onnx_path"])

    autocast = types.SimpleNamespace(convert_to_mixed_precision=convert_to_mixed_precision, calls=calls)
    monkeypatch.setattr(build_engine, "import_autocast", lambda: autocast)
    return autocast


def _graph_file(path: Path, with_topk: bool) -> Path:
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("MatMul", ["q", "c"], ["s"], name="/MatMul")]
    outputs = [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 4])]
    if with_topk:
        k = helper.make_tensor("k", TensorProto.INT64, [1], [2])
        nodes.append(helper.make_node("TopK", ["s", "k"], ["v", "i"], name="/TopK"))
        outputs = [
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 2]),
            helper.make_tensor_value_info("i", TensorProto.INT64, [1, 2]),
        ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 3]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [3, 4]),
        ],
        outputs,
        initializer=[k] if with_topk else [],
    )
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_similarity_scores_are_kept_fp32_up_to_the_top_k(tmp_path: Path, monkeypatch) -> None:
    """Strong typing: the FP32 scores are AutoCast exclusions (TensorRT 11 has no per-layer precision request)."""
    ranking = _graph_file(tmp_path / "ranking.onnx", with_topk=True)
    assert build_engine.fp32_exclusions(ranking) == {
        "nodes_to_exclude": ["rerank/.*"],
        "op_types_to_exclude": ["MatMul", "Gemm", "TopK"],
    }
    plain = _graph_file(tmp_path / "plain.onnx", with_topk=False)
    assert build_engine.fp32_exclusions(plain) == {"nodes_to_exclude": [], "op_types_to_exclude": []}
    autocast = fake_autocast(monkeypatch)
    out, kept = build_engine.fp16_onnx(ranking, tmp_path / "work" / "ranking.fp16.onnx")
    assert out.is_file() and kept["op_types_to_exclude"] == ["MatMul", "Gemm", "TopK"]
    assert autocast.calls[0]["keep_io_types"] is True and autocast.calls[0]["nodes_to_exclude"] == ["rerank/.*"]


def test_without_modelopt_the_plans_are_skipped_saying_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(b"x"))

    def missing():
        raise ModuleNotFoundError("No module named 'modelopt'")

    monkeypatch.setattr(build_engine, "import_autocast", missing)
    reason = build_engine.unavailable_reason()
    assert reason and "ModelOpt AutoCast" in reason and ".[gpu]" in reason
