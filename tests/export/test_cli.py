"""Every stage's command line: bad input is one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from common.cli import CliError
from export import onnx_export
from tests.export.conftest import run_module

STAGES = ("export.onnx_export", "calibration.calibrate", "export.build_engine", "export.benchmark", "export.summary")
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def assert_one_line_error(proc, *needles: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


def _args(stage: str, artifacts: Path | str, repo: Path | str) -> list[str]:
    extra = ["--target", "cpu"] if stage == "export.build_engine" else []
    return ["--artifacts", str(artifacts), "--repo", str(repo), *extra]


@pytest.mark.parametrize("stage", STAGES)
def test_a_missing_artifacts_directory_is_a_one_line_error(stage: str, tmp_path: Path) -> None:
    proc = run_module(stage, *_args(stage, tmp_path / "missing", tmp_path))
    assert_one_line_error(proc, "missing", "not a directory")


@pytest.mark.parametrize("stage", STAGES)
def test_an_unknown_flag_is_a_one_line_error(stage: str, tmp_path: Path) -> None:
    proc = run_module(stage, *_args(stage, tmp_path, tmp_path), "--frobnicate")
    assert_one_line_error(proc, "--frobnicate")


@pytest.mark.parametrize("stage", [s for s in STAGES if s != "export.summary"])
def test_an_unknown_model_name_is_a_one_line_error(stage: str, tmp_path: Path) -> None:
    proc = run_module(stage, *_args(stage, tmp_path, tmp_path), "--models", "nhits,resnet50")
    assert_one_line_error(proc, "resnet50")


def test_a_missing_checkpoint_names_the_model(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CliError, match=r"nhits: checkpoint .* is missing; train first with `python -m models.train"):
        onnx_export.main(["--artifacts", str(tmp_path), "--repo", str(tmp_path), "--models", "nhits"])


def test_calibration_without_an_exported_model_says_what_to_run(tmp_path: Path) -> None:
    proc = run_module("calibration.calibrate", "--artifacts", tmp_path, "--repo", tmp_path, "--models", "similarity")
    assert_one_line_error(proc, "similarity", "export.onnx_export")


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_engine_build_without_tensorrt_skips_with_one_line_on_the_cpu_target(tmp_path: Path) -> None:
    proc = run_module("export.build_engine", "--artifacts", tmp_path, "--repo", tmp_path, "--target", "cpu")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    assert "TensorRT is not importable" in lines[0]
    assert "TensorRT plans skipped" in lines[0]
    assert "make export TARGET=gpu" in lines[0]


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_engine_build_without_tensorrt_fails_on_the_gpu_target(tmp_path: Path) -> None:
    proc = run_module("export.build_engine", "--artifacts", tmp_path, "--repo", tmp_path, "--target", "gpu")
    assert proc.returncode == 1
    assert "TensorRT plans skipped" in proc.stdout


def test_engine_build_target_must_be_cpu_or_gpu(tmp_path: Path) -> None:
    proc = run_module("export.build_engine", "--artifacts", tmp_path, "--repo", tmp_path, "--target", "tpu")
    assert_one_line_error(proc, "--target")
