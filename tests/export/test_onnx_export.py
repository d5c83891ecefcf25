"""The exported ONNX files: names, dynamic batch, checker, and ONNX Runtime against PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from common.ort import ort_session
from export import graphs, onnx_export
from models import registry, spec

MODELS = graphs.ALL_MODELS


def load(repo: Path, name: str) -> onnx.ModelProto:
    return onnx.load(str(spec.version_dir(name, repo) / spec.ONNX_FP32))


@pytest.mark.parametrize("name", MODELS)
def test_tensor_names_dtypes_and_dims_follow_the_spec_with_a_dynamic_batch_axis(repo: Path, name: str) -> None:
    assert onnx_export.check_graph(name, load(repo, name)) == []


@pytest.mark.parametrize("name", MODELS)
def test_checker_and_strict_shape_inference_pass_on_a_single_file(repo: Path, name: str) -> None:
    path = spec.version_dir(name, repo) / spec.ONNX_FP32
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert model.opset_import[0].version >= 17
    assert not {n.op_type for n in model.graph.node} & onnx_export.CONTROL_FLOW


@pytest.mark.parametrize("name", MODELS)
def test_onnx_runtime_matches_pytorch_on_real_test_inputs(artifacts: Path, repo: Path, name: str) -> None:
    torch.set_num_threads(1)
    model = registry.load_model(name, artifacts)
    inputs = tuple(registry.example_inputs(name, artifacts, "test", 3))
    input_names, output_names = graphs.io_names(name)
    sess = ort_session(spec.version_dir(name, repo) / spec.ONNX_FP32)
    ort_out = sess.run(output_names, {n: t.numpy() for n, t in zip(input_names, inputs, strict=True)})
    with torch.inference_mode():
        ref = model(*inputs)
    ref = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
    result = onnx_export.compare(name, ort_out, ref, output_names)
    assert onnx_export.failures(name, {"test": result}) == []


def test_report_says_every_model_passed_within_the_fp32_bound(artifacts: Path) -> None:
    report = json.loads((artifacts / "reports" / "export.json").read_text())
    assert report["bound"]["fp32_rel_err"] == onnx_export.FP32_BOUND
    assert set(report["models"]) == set(MODELS)
    for name, entry in report["models"].items():
        assert entry["passed"], (name, entry["failures"])
        for case in ("random", "test", "test_batch1"):
            for out in entry["verification"][case].values():
                if isinstance(out, dict):
                    assert out.get("rel_err", 0.0) <= onnx_export.FP32_BOUND
                    assert out.get("mismatches", 0) == 0


def test_user_embedding_states_its_valid_id_range_in_metadata(artifacts: Path, repo: Path) -> None:
    sess = ort_session(spec.version_dir("user_embedding", repo) / spec.ONNX_FP32)
    meta = sess.get_modelmeta().custom_metadata_map
    n_users = registry.load_model("user_embedding", artifacts).table.shape[0]
    assert meta["valid_range.user_id"] == f"0,{n_users}"
    assert len(meta["source_checkpoint_sha256"]) == 64


def test_relative_error_is_max_abs_difference_over_max_abs_reference() -> None:
    ref = np.array([[1.0, -4.0], [2.0, 0.5]])
    assert graphs.relative_error(ref + 0.01, ref) == pytest.approx(0.01 / 4.0)
    assert graphs.relative_error(np.zeros(2), np.zeros(2)) == 0.0
    assert graphs.relative_error(np.zeros(3), np.zeros(2)) == float("inf")


def test_ids_may_differ_only_where_the_scores_tie() -> None:
    scores = np.array([[0.9, 0.5, 0.5]], np.float32)
    ids_ref = np.array([[3, 7, 8]])
    swapped = np.array([[3, 8, 7]])
    tie = onnx_export.compare("similarity", [scores, swapped], [scores, ids_ref], ["scores", "ids"])
    assert tie["ids"] == {"mismatches": 0, "ties": 2}
    other = np.array([[0.9, 0.4, 0.5]], np.float32)
    real = onnx_export.compare("similarity", [other, swapped], [scores, ids_ref], ["scores", "ids"])
    assert real["ids"]["mismatches"] == 1


def test_a_second_export_with_nothing_changed_is_skipped(
    artifacts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Idempotence on a scratch copy: the record beside the ONNX file makes the second run a no-op."""
    work = tmp_path / "artifacts"
    work.mkdir()
    for sub in ("checkpoints", "data"):
        (work / sub).symlink_to(artifacts / sub)
    repo = tmp_path / "repo"
    repo.mkdir()
    argv = ["--artifacts", str(work), "--repo", str(repo), "--models", "user_embedding"]
    assert onnx_export.main(argv) == 0
    onnx_path = spec.version_dir("user_embedding", repo) / spec.ONNX_FP32
    mtime = onnx_path.stat().st_mtime_ns
    capsys.readouterr()
    assert onnx_export.main(argv) == 0
    assert "unchanged, kept: user_embedding" in capsys.readouterr().out
    assert onnx_path.stat().st_mtime_ns == mtime
    report = json.loads((work / "reports" / "export.json").read_text())
    assert report["models"]["user_embedding"]["skipped"] is True
