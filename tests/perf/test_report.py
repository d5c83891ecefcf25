"""A small recorded run (tests/perf/data/) becomes a report with plots, goals and gate ratios."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perf import goals, report

DATA = Path(__file__).parent / "data"
RUN = DATA / "run"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    search = json.loads((DATA / "search.json").read_text())
    return report.write(RUN, out, search=search)


def test_the_report_and_every_figure_it_links_are_written(written: Path):
    text = written.read_text()
    links = [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert {
        "latency_nhits.png",
        "latency_similarity.png",
        "stream_vs_windowed.png",
        "goals.png",
    } <= set(links)
    for name in links:
        assert (written.parent / name).read_bytes()[:8] == PNG


def test_the_report_names_the_machine_the_versions_and_the_commands(written: Path):
    text = written.read_text()
    env = json.loads((RUN / "env.json").read_text())
    assert f"{env['machine']['nproc']} cores ({env['machine']['cpu_model']})" in text
    assert "perf_analyzer 2.51.0" in text and "tritonserver 2.51.0" in text
    for command in ("make perf", "make perf-report", "make perf-search", "python -m perf.gate"):
        assert command in text


def test_the_report_states_every_goal_with_a_verdict_and_a_reason(written: Path):
    summary = goals.summarize(RUN)
    text = written.read_text()
    assert len(summary["goals"]) == sum(map(len, goals.GOALS.values()))  # every goal of perf/goals.yaml
    for g in summary["goals"]:
        assert g["reason"], g
        assert g["reason"].split(";")[0][:40] in text


def test_ratios_come_from_the_same_run(written: Path):
    summary = goals.summarize(RUN)
    m = summary["models"]["nhits"]
    assert m["peak_over_eager"] == pytest.approx(m["peak"]["throughput"] / m["eager"]["throughput"])
    on = goals.at(m["sweep"], m["dynbatch_concurrency"])
    off = goals.at(m["batching_off"], m["dynbatch_concurrency"])
    assert m["dynbatch"] == pytest.approx(on["throughput"] / off["throughput"])
    assert summary["ratios"]["nhits.peak_over_eager"] == pytest.approx(m["peak_over_eager"], rel=1e-3)
    assert f"{m['peak_over_eager']:.2f}x" in written.read_text()


def test_knee_and_chosen_point_follow_their_definitions():
    sweep = [
        {"concurrency": 1, "throughput": 100.0, "p99_ms": 2.0},
        {"concurrency": 4, "throughput": 380.0, "p99_ms": 6.0},
        {"concurrency": 8, "throughput": 400.0, "p99_ms": 15.0},
    ]
    assert goals.knee(sweep)["concurrency"] == 4  # first point at >= 90 % of the peak
    assert goals.chosen(sweep, 10.0)["concurrency"] == 4
    assert goals.chosen(sweep, 1.0) is None


@pytest.mark.slow
def test_report_cli_rebuilds_from_a_run_directory(tmp_path: Path):
    assert report.main(["--run", str(RUN), "--out", str(tmp_path), "--search", str(DATA / "search.json")]) == 0
    assert (tmp_path / "report.md").is_file() and (tmp_path / "latency_reservoir.png").is_file()


def test_the_recorded_run_renders_the_report_recorded_with_it(written: Path):
    """Every figure, table, goal and ratio, to the character: tests/perf/data/report.md was rendered from this
    run before perf/ was consolidated (issue 17); re-record it only when the report is meant to change."""
    assert written.read_text() == (DATA / "report.md").read_text()
