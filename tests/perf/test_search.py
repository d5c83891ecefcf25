"""Config search: the grid, the frontier, and --apply rewriting a cpu config it can read back."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from models import spec
from perf import search
from serving.repository import load_config


def test_grid_skips_points_that_use_more_cores_than_the_machine_has():
    points = search.grid((1, 2), (1, 2), (100,), ("none", "16,64"), cores=2)
    assert {(g.instances, g.threads) for g in points} == {(1, 1), (1, 2), (2, 1)}
    assert {g.preferred for g in points} == {(), (16, 64)}
    assert len(search.grid((1, 2), (1, 2), (100,), ("none",), cores=2, oversubscribe=True)) == 4


def test_frontier_keeps_only_points_no_other_point_beats_on_both_axes():
    pts = [
        {"p99_ms": 5.0, "throughput": 100.0},
        {"p99_ms": 6.0, "throughput": 90.0},  # dominated
        {"p99_ms": 8.0, "throughput": 300.0},
        {"p99_ms": 20.0, "throughput": 250.0},  # dominated
    ]
    assert [p["throughput"] for p in search.frontier(pts)] == [100.0, 300.0]


@pytest.mark.parametrize("model", ["nhits", "reservoir", "similarity"])
def test_apply_writes_the_winner_with_a_comment_and_keeps_the_rest(model: str, tmp_path: Path):
    src = spec.ROOT / "model_repository" / model
    shutil.copytree(src / "configs", tmp_path / model / "configs")
    before = load_config(tmp_path / model / "configs" / "cpu.pbtxt")
    g = search.Grid(instances=2, threads=1, delay_us=2000, preferred=(8, 32))
    path = search.apply(tmp_path, model, g, "chosen by `python -m perf.search --apply` on a test\nsecond line")
    text = path.read_text()
    assert "# perf-search: chosen by `python -m perf.search --apply`" in text
    assert search.committed(tmp_path, model) == g
    after = load_config(path)
    assert after.input == before.input and after.output == before.output
    assert after.parameters["precision"] == before.parameters["precision"]
    # applying again replaces the old comment instead of piling comments up
    search.apply(tmp_path, model, search.Grid(1, 2, 100, ()), "again")
    text = path.read_text()
    assert text.count("# perf-search") == 1 and "preferred_batch_size" not in text


def test_without_apply_the_search_changes_no_config(tmp_path: Path):
    shutil.copytree(spec.ROOT / "model_repository" / "nhits" / "configs", tmp_path / "nhits" / "configs")
    path = tmp_path / "nhits" / "configs" / "cpu.pbtxt"
    before = path.read_text()
    text = search.render_config(before, search.Grid(2, 1, 100, ()), "dry")  # what --apply would write
    assert text != before and path.read_text() == before
