"""Every .pbtxt parses with Triton's own ModelConfig protobuf and agrees with the spec, the
ensemble steps and the exported ONNX files."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import spec
from serving import repository

REPO = spec.ROOT / "model_repository"


@pytest.mark.parametrize("path", repository.config_paths(REPO), ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_parses_with_the_model_config_protobuf(path: Path):
    cfg = repository.load_config(path)
    assert cfg.name == path.relative_to(REPO).parts[0]


def test_a_typo_in_a_config_is_caught(tmp_path: Path):
    bad = tmp_path / "config.pbtxt"
    bad.write_text((REPO / "nhits" / "config.pbtxt").read_text().replace("max_batch_size", "max_batch_sise"))
    with pytest.raises(ValueError, match="max_batch_sise"):
        repository.load_config(bad)


def test_configs_match_the_spec_for_both_targets():
    assert repository.check_layout(REPO) == []


def test_ensemble_steps_name_existing_tensors_with_matching_types():
    assert repository.check_ensembles(REPO) == []


def test_a_broken_ensemble_mapping_is_reported(tmp_path: Path):
    repository.copy_configs(REPO, tmp_path)
    path = tmp_path / "forecast" / "config.pbtxt"
    path.write_text(path.read_text().replace('value: "reservoir_forecast" }\n    },', 'value: "other" }\n    },'))
    problems = repository.check_ensembles(tmp_path)
    assert any("reservoir_forecast" in p for p in problems), problems


@pytest.mark.parametrize("filename", [spec.ONNX_FP32, spec.ONNX_INT8])
def test_configs_match_the_exported_onnx_files(repo: Path, filename: str):
    assert repository.check_onnx(repo, filename) == []


def test_gpu_configs_are_tensorrt_plans_and_cpu_configs_use_the_project_backend():
    for name in (*spec.EXPORTED, spec.STREAM.name):
        gpu = repository.load_config(REPO / name / "config.pbtxt")
        cpu = repository.load_config(REPO / name / "configs" / "cpu.pbtxt")
        assert gpu.platform == "tensorrt_plan" and gpu.instance_group[0].kind == gpu.instance_group[0].KIND_GPU
        assert cpu.backend == "onnxruntime_py" and cpu.instance_group[0].kind == cpu.instance_group[0].KIND_CPU
        assert {"precision", "intra_op_threads"} <= set(cpu.parameters)


def test_response_cache_is_on_for_recommend_and_the_gpu_similarity_only():
    """Not on the cpu similarity: Triton 2.51 caches a python-backend error as an empty success
    (tests/reliability/test_fuzz.py::test_a_repeated_bad_request_gets_its_error_again_not_an_empty_success)."""
    cached = {
        p.relative_to(REPO).as_posix()
        for p in repository.config_paths(REPO)
        if repository.load_config(p).response_cache.enable
    }
    assert cached == {"similarity/config.pbtxt", "recommend/config.pbtxt"}
