"""The plan check of a GPU host (export.check_plans): the trtexec and Polygraphy commands it runs for each plan,
from the profile recorded at build time. The commands themselves run only where TensorRT does (`make gpu-check`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.files import write_json
from export import build_engine, check_plans
from models import spec


def fake_plans(repo: Path, model: str, profile: dict) -> None:
    vdir = spec.version_dir(model, repo)
    vdir.mkdir(parents=True)
    for plan in (spec.PLAN_FP16, spec.PLAN_INT8):
        (vdir / plan).write_bytes(b"not a plan")
        write_json(build_engine.provenance_path(vdir / plan), {"profile": profile})


def test_each_plan_is_loaded_at_its_opt_shape_and_compared_with_the_file_it_was_built_from(tmp_path: Path) -> None:
    fake_plans(tmp_path, "nhits", {"min": 1, "opt": 256, "max": 1024})
    plan = spec.version_dir("nhits", tmp_path) / spec.PLAN_INT8
    trtexec, onnxrt, trt = check_plans.commands("nhits", plan, tmp_path / "work")
    assert f"--loadEngine={plan}" in trtexec and "--shapes=window:256x168" in trtexec
    assert onnxrt[2] == str(plan.with_name(spec.ONNX_INT8)) and "window:[256,168]" in onnxrt
    assert trt[2] == str(plan) and trt[trt.index("--load-outputs") + 1] == onnxrt[onnxrt.index("--save-outputs") + 1]
    assert trt[trt.index("--atol") + 1] == "0.05"


def test_the_token_axis_takes_the_profiles_opt_length_and_ids_stay_in_the_vocabulary(tmp_path: Path) -> None:
    fake_plans(
        tmp_path, "text_encoder", {"min": 1, "opt": 32, "max": 64, "sequence": {"min": 1, "opt": 32, "max": 256}}
    )
    plan = spec.version_dir("text_encoder", tmp_path) / spec.PLAN_FP16
    trtexec, onnxrt, _ = check_plans.commands("text_encoder", plan, tmp_path)
    assert "--shapes=input_ids:32x32,attention_mask:32x32" in trtexec
    assert f"input_ids:[0,{spec.DIMS.vocab_size - 1}]" in onnxrt and "attention_mask:[1,1]" in onnxrt
    assert onnxrt[2] == str(plan.with_name(spec.ONNX_FP32))


def test_the_stream_plan_gets_its_state_input(tmp_path: Path) -> None:
    fake_plans(tmp_path, "reservoir_stream", {"min": 1, "opt": 64, "max": 256})
    trtexec, *_ = check_plans.commands(
        "reservoir_stream", spec.version_dir("reservoir_stream", tmp_path) / spec.PLAN_FP16, tmp_path
    )
    assert f"--shapes=tick:64x1,state_in:64x{spec.RESERVOIR_UNITS}" in trtexec


def test_the_cli_lists_every_plan_in_a_dry_run_and_refuses_a_repository_without_plans(tmp_path: Path) -> None:
    fake_plans(tmp_path, "similarity", {"min": 1, "opt": 64, "max": 256})
    run = [sys.executable, "-m", "export.check_plans", "--repo", str(tmp_path), "--work", str(tmp_path / "w")]
    out = subprocess.run([*run, "--dry-run"], capture_output=True, text=True, check=True).stdout
    assert out.count("--loadEngine=") == 2 and "2 plans listed" in out
    empty = subprocess.run([*run[:4], str(tmp_path / "none")], capture_output=True, text=True)
    assert empty.returncode != 0 and "error:" in empty.stderr


@pytest.mark.parametrize("model", [m for m in spec.EXPORTED])
def test_every_exported_model_has_inputs_polygraphy_can_draw(tmp_path: Path, model: str) -> None:
    fake_plans(tmp_path, model, {"min": 1, "opt": 8, "max": 64, "sequence": {"min": 1, "opt": 16, "max": 256}})
    _, onnxrt, _ = check_plans.commands(model, spec.version_dir(model, tmp_path) / spec.PLAN_FP16, tmp_path)
    ranges = onnxrt[onnxrt.index("--val-range") + 1 : onnxrt.index("--seed")]
    assert {r.split(":")[0] for r in ranges} == {t.name for t in spec.MODELS[model].inputs}
