"""Config search with Triton Model Analyzer (perf/model_analyzer.py): the search space it is given, the configs it is
allowed to write, and one real profile of the small repository (Model Analyzer starts our tritonserver)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.triton import load_config
from models import spec
from perf import model_analyzer
from repository import layout

REPO = spec.ROOT / "model_repository"


def test_the_search_space_covers_precision_threads_and_batching_for_the_searched_models():
    space = model_analyzer.read_space()
    for name in ("nhits", "similarity"):  # their INT8 files meet their accuracy goals
        assert set(space["models"][name]["files"]) == {spec.ONNX_FP32, spec.ONNX_INT8}
    params = model_analyzer.model_config_parameters(space["models"]["nhits"])
    assert params["instance_group"] == [
        [{"kind": "KIND_CPU", "count": n}] for n in space["models"]["nhits"]["instances"]
    ]
    assert params["parameters"]["intra_op_thread_count"]["string_value"] == ["1", "2"]
    assert params["dynamic_batching"]["max_queue_delay_microseconds"] == space["models"]["nhits"]["max_queue_delay_us"]


def test_settings_read_every_searched_field_of_the_committed_configs():
    for name in model_analyzer.read_space()["models"]:
        s = model_analyzer.settings(load_config(REPO / name / "configs" / "cpu.pbtxt"))
        assert s["instances"] >= 1 and s["threads"] >= 1 and s["file"] in (spec.ONNX_FP32, spec.ONNX_INT8)


@pytest.mark.parametrize("model", ["nhits", "reservoir", "similarity"])
def test_apply_writes_the_winner_with_a_comment_keeps_the_rest_and_its_variants(model: str, tmp_path: Path):
    layout.copy_configs(REPO, tmp_path)
    path = tmp_path / model / "configs" / "cpu.pbtxt"
    before = load_config(path)
    s = {"instances": 2, "threads": 1, "delay_us": 2000, "preferred": [8, 32], "file": spec.ONNX_INT8}
    model_analyzer.apply(tmp_path, model, s, "chosen by Model Analyzer, run test\nsecond line")
    text = path.read_text()
    assert "# perf-search: chosen by Model Analyzer, run test" in text
    assert model_analyzer.settings(load_config(path)) == s
    after = load_config(path)
    assert after.input == before.input and after.output == before.output and after.backend == "onnxruntime"
    assert layout.check_variants(tmp_path) == []  # cpu_fp32 / cpu_int8 follow
    # applying again replaces the old comment instead of piling comments up
    model_analyzer.apply(tmp_path, model, {**s, "preferred": [], "delay_us": 100, "file": spec.ONNX_FP32}, "again")
    text = path.read_text()
    assert text.count("# perf-search") == 1 and "preferred_batch_size" not in text


def test_a_config_that_would_not_read_back_is_never_written(tmp_path: Path):
    layout.copy_configs(REPO, tmp_path)
    path = tmp_path / "nhits" / "configs" / "cpu.pbtxt"
    before = path.read_text()
    path.write_text(before.replace('{ key: "intra_op_thread_count"', '{ key: "intra_op_threads"'))
    with pytest.raises(ValueError, match="intra_op_thread_count"):
        model_analyzer.apply(
            tmp_path, "nhits", {"instances": 1, "threads": 2, "delay_us": 0, "preferred": [], "file": "m"}, "x"
        )
    assert "intra_op_threads" in path.read_text() and not path.with_suffix(".pbtxt.tmp").exists()


@pytest.mark.slow
def test_model_analyzer_profiles_the_cpu_target_and_apply_writes_its_winner(repo, artifacts, tmp_path: Path):
    """`model-analyzer profile` for real: local launch of the wheel's tritonserver with our ONNX Runtime backend,
    two variants of forecast_blend at concurrency 1; --apply into a copy of the repository."""
    if not (model_analyzer.MA_VENV / "bin" / "model-analyzer").is_file():
        pytest.fail(
            f"Model Analyzer is not installed in {model_analyzer.MA_VENV}: `make test` installs it (make perf-search)"
        )
    copy = tmp_path / "repo"
    layout.copy_configs(repo, copy)
    for name in ("forecast_blend", "nhits", "reservoir"):  # the blend's inputs come from the two forecasters
        for f in spec.version_dir(name, repo).iterdir():
            (spec.version_dir(name, copy) / f.name).symlink_to(f.resolve())
    space = {
        "concurrency": [1],
        "measurement_interval_ms": 500,
        "models": {
            "forecast_blend": {
                "input": "blend",
                "instances": [1],
                "intra_op_threads": [1],
                "max_queue_delay_us": [0, 300],
                "preferred_batch_size": [[16, 64]],
                "files": [spec.ONNX_FP32],
            }
        },
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "perf.model_analyzer", "--space", str(tmp_path / "space.yaml"), "--repo", str(copy)]
    cmd += ["--artifacts", str(artifacts), "--models", "forecast_blend", "--out", str(out), "--apply"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=spec.ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((out / "latest" / "search.json").read_text())
    entry = result["models"]["forecast_blend"]
    assert {p["settings"]["delay_us"] for p in entry["points"]} >= {0, 300}
    assert any(p["committed"] for p in entry["points"])
    assert all(p["throughput"] > 0 and p["p99_ms"] > 0 for p in entry["points"])
    assert (out / "latest" / "ma" / "results" / model_analyzer.RESULTS_CSV).is_file()
    w = entry["winner"]
    assert w is not None and w["meets_budget"]
    assert model_analyzer.settings(load_config(copy / "forecast_blend" / "configs" / "cpu.pbtxt")) == w["settings"]
    assert "chosen by Model Analyzer" in (copy / "forecast_blend" / "configs" / "cpu.pbtxt").read_text()
    shutil.rmtree(out, ignore_errors=True)
