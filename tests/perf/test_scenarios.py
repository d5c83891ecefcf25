"""Scenario files parse, name existing models and fill exactly the tensors the spec and configs declare."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import spec
from perf import inputs, perf_analyzer, scenarios

ALL = scenarios.load_all()


# Served only as steps of the search ensemble (text in): measured there, with the encoder's in-process baseline.
INSIDE_SEARCH = {"tokenizer", "text_encoder"}


def test_there_is_a_scenario_per_model_and_ensemble():
    covered = {s.model for s in ALL} | {s.base_model(s.run_model(r)) for s in ALL for r in s.runs}
    assert set(spec.MODELS) - INSIDE_SEARCH <= covered and "search" in covered


@pytest.mark.parametrize("scenario", ALL, ids=lambda s: s.name)
def test_scenario_is_valid_against_the_spec_and_the_committed_configs(scenario: scenarios.Scenario):
    assert scenarios.validate(scenario) == []


@pytest.mark.parametrize("scenario", ALL, ids=lambda s: s.name)
def test_every_run_expands_to_perf_analyzer_commands(scenario: scenarios.Scenario, tmp_path: Path):
    for run in scenario.runs:
        points = scenarios.points(scenario, run, tmp_path / "data.json", perf_analyzer.Measurement(), peak=1000.0)
        assert points, run
        for p in points:
            cmd = perf_analyzer.command(p, "127.0.0.1:8001", tmp_path / "out.csv", key="secret")
            assert cmd[cmd.index("-m") + 1] == p.model
            assert "secret" not in " ".join(perf_analyzer.redact(cmd))


def test_the_stream_scenario_uses_sequences_and_compares_with_the_windowed_reservoir():
    s = next(s for s in ALL if s.model == spec.STREAM.name)
    stream = next(r for r in s.runs if r["name"] == s.compare["stream"])
    window = next(r for r in s.runs if r["name"] == s.compare["window"])
    assert stream["sequence_length"] > 1 and stream["sequence_id_range"][1] > stream["sequence_id_range"][0]
    assert window["model"] == "reservoir" and window["concurrency"] == stream["concurrency"]


def test_a_scenario_naming_a_tensor_the_model_lacks_is_rejected(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: nhits\ninput_data: {kind: queries}\nruns:\n  - {name: sweep, concurrency: [1]}\n")
    problems = scenarios.validate(scenarios.load(bad))
    assert any("query" in p and "window" in p for p in problems), problems


def test_a_scenario_with_an_unknown_key_is_rejected(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: nhits\ninput_data: {kind: windows}\nruns:\n  - {name: sweep, concurency: [1]}\n")
    problems = scenarios.validate(scenarios.load(bad))
    assert any("concurency" in p for p in problems), problems


@pytest.mark.parametrize("kind", inputs.KINDS)
def test_input_data_files_hold_real_project_data_for_the_right_tensors(
    kind: str, artifacts: Path, repo: Path, tmp_path: Path
):
    path = inputs.write(kind, artifacts, repo, tmp_path / f"{kind}.json", n=8, length=24)
    assert inputs.tensors_in(path) == set(inputs.TENSORS[kind])
    if kind == "windows":
        import json

        from models import data

        x, _ = data.load_windows(artifacts, "test")
        first = json.loads(path.read_text())["data"][0]["window"]["content"]
        assert first == pytest.approx(x[0].tolist(), rel=1e-6)  # the first test-split window, not noise
