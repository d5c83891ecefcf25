"""Every .pbtxt parses with Triton's own ModelConfig protobuf and agrees with the spec, the
ensemble steps and the exported ONNX files."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import spec
from repository import layout

REPO = spec.ROOT / "model_repository"


@pytest.mark.parametrize("path", layout.config_paths(REPO), ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_parses_with_the_model_config_protobuf(path: Path):
    cfg = layout.load_config(path)
    assert cfg.name == path.relative_to(REPO).parts[0]


def test_a_typo_in_a_config_is_caught(tmp_path: Path):
    bad = tmp_path / "config.pbtxt"
    bad.write_text((REPO / "nhits" / "config.pbtxt").read_text().replace("max_batch_size", "max_batch_sise"))
    with pytest.raises(ValueError, match="max_batch_sise"):
        layout.load_config(bad)


def test_configs_match_the_spec_for_both_targets():
    assert layout.check_layout(REPO) == []


def test_ensemble_steps_name_existing_tensors_with_matching_types():
    assert layout.check_ensembles(REPO) == []


def test_a_broken_ensemble_mapping_is_reported(tmp_path: Path):
    layout.copy_configs(REPO, tmp_path)
    path = tmp_path / "forecast" / "config.pbtxt"
    path.write_text(path.read_text().replace('value: "reservoir_forecast" }\n    },', 'value: "other" }\n    },'))
    problems = layout.check_ensembles(tmp_path)
    assert any("reservoir_forecast" in p for p in problems), problems


@pytest.mark.parametrize("filename", [spec.ONNX_FP32, spec.ONNX_INT8])
def test_configs_match_the_exported_onnx_files(repo: Path, filename: str):
    assert layout.check_onnx(repo, filename) == []


def test_gpu_configs_are_tensorrt_plans_and_cpu_configs_use_the_onnx_runtime_backend():
    for name in (*spec.EXPORTED, spec.STREAM.name):
        gpu = layout.load_config(REPO / name / "config.pbtxt")
        cpu = layout.load_config(REPO / name / "configs" / "cpu.pbtxt")
        assert gpu.platform == "tensorrt_plan" and gpu.instance_group[0].kind == gpu.instance_group[0].KIND_GPU
        assert gpu.default_model_filename == spec.PLAN_FP16
        assert cpu.backend == "onnxruntime" and cpu.instance_group[0].kind == cpu.instance_group[0].KIND_CPU
        assert cpu.default_model_filename in (spec.ONNX_FP32, spec.ONNX_INT8, spec.ONNX_CPU)
        assert {"intra_op_thread_count", "inter_op_thread_count"} <= set(cpu.parameters)


def test_precision_variants_are_their_base_config_with_only_the_model_file_changed():
    assert layout.check_variants(REPO) == []
    for name in (*spec.EXPORTED, spec.STREAM.name):
        for variant, (base_rel, filename) in layout.VARIANTS.items():
            base = layout.load_config(REPO / name / base_rel)
            other = layout.load_config(REPO / name / "configs" / f"{variant}.pbtxt")
            assert other.default_model_filename == (filename or base.default_model_filename)  # None: as its base
            other.default_model_filename = base.default_model_filename
            if variant == "cpu_lanes" and name in layout.LANES_MODELS:  # and its priority lanes
                assert other.dynamic_batching.priority_levels == 3, f"{name}/cpu_lanes has no priority lanes"
                for field in ("priority_levels", "default_priority_level", "priority_queue_policy"):
                    other.dynamic_batching.ClearField(field)
            assert other == base, f"{name}/{variant} differs from {base_rel} in more than its model file"


def test_a_hand_edited_variant_is_caught(tmp_path: Path):
    layout.copy_configs(REPO, tmp_path)
    path = tmp_path / "nhits" / "configs" / "cpu_int8.pbtxt"
    path.write_text(path.read_text().replace("max_queue_delay_microseconds: 0", "max_queue_delay_microseconds: 7"))
    assert [p for p in layout.check_variants(tmp_path) if "nhits/configs/cpu_int8.pbtxt" in p]


def test_stateful_stream_uses_implicit_state_on_both_targets_with_no_control_tensors():
    for rel in ("config.pbtxt", "configs/cpu.pbtxt"):
        seq = layout.load_config(REPO / spec.STREAM.name / rel).sequence_batching
        assert not seq.control_input, f"{rel}: control tensors the graph does not have"
        (state,) = seq.state
        assert (state.input_name, state.output_name, list(state.dims)) == ("state_in", "state_out", [1000])
        assert state.initial_state[0].zero_data


def test_response_cache_is_on_for_similarity_and_recommend_on_both_targets():
    """Triton caches whatever the model answered; no backend here answers a value problem with an error (the graph
    answers a sentinel, tests/serving/test_server.py checks the cache repeats it), so both may cache."""
    cached = {
        p.relative_to(REPO).as_posix() for p in layout.config_paths(REPO) if layout.load_config(p).response_cache.enable
    }
    want = {"recommend/config.pbtxt", "similarity/config.pbtxt", "similarity/configs/cpu.pbtxt"}
    want |= {f"similarity/configs/{v}.pbtxt" for v in layout.VARIANTS}
    assert cached == want


def test_set_dims_rewrites_fixed_dims_and_leaves_a_warm_up_of_the_dynamic_token_axis(tmp_path):
    """A user's dims rewrite window/forecast/embedding dims; the text encoder's warm-up keeps its 32 tokens."""
    layout.copy_configs(spec.MODEL_REPOSITORY, tmp_path)
    try:
        spec.use_dims(spec.Dims(96, 12, 32))
        layout.set_dims(tmp_path)
        nhits = (tmp_path / "nhits" / "config.pbtxt").read_text()
        assert "dims: [ 96 ]" in nhits and "dims: [ 12 ]" in nhits
        encoder = (tmp_path / "text_encoder" / "config.pbtxt").read_text()
        assert encoder == (spec.MODEL_REPOSITORY / "text_encoder" / "config.pbtxt").read_text()
    finally:
        spec.use_dims(spec.DEFAULT_DIMS)
