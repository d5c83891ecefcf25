"""The regression gate passes within tolerance and fails on a drop or a missing ratio."""

from __future__ import annotations

import json
from pathlib import Path

from perf import gate

BASELINE = {"tolerance": 0.3, "ratios": {"nhits.peak_over_eager": 4.0, "similarity.dynbatch": 3.0}}


def _files(tmp_path: Path, ratios: dict, baseline: dict = BASELINE) -> tuple[Path, Path]:
    b = tmp_path / "baseline.json"
    b.write_text(json.dumps(baseline))
    s = tmp_path / "summary.json"
    s.write_text(json.dumps({"run": {"id": "x", "quick": False}, "machine": {}, "ratios": ratios}))
    return b, s


def test_ratios_within_tolerance_pass(tmp_path: Path, capsys):
    b, s = _files(tmp_path, {"nhits.peak_over_eager": 2.9, "similarity.dynbatch": 3.5})
    assert gate.main(["--baseline", str(b), "--run", str(s)]) == 0
    assert "2/2 ratios within tolerance" in capsys.readouterr().out


def test_a_ratio_that_fell_more_than_the_tolerance_fails(tmp_path: Path, capsys):
    b, s = _files(tmp_path, {"nhits.peak_over_eager": 2.7, "similarity.dynbatch": 3.0})
    assert gate.main(["--baseline", str(b), "--run", str(s)]) == 1
    out = capsys.readouterr().out
    assert "FAIL nhits.peak_over_eager" in out and "REGRESSION" in out


def test_a_ratio_the_run_did_not_measure_fails(tmp_path: Path):
    b, s = _files(tmp_path, {"nhits.peak_over_eager": 4.0})
    rows = gate.compare(json.loads(b.read_text()), json.loads(s.read_text())["ratios"])
    assert [r["why"] for r in rows if not r["ok"]] == ["not measured"]
    assert gate.main(["--baseline", str(b), "--run", str(s)]) == 1


def test_per_ratio_and_command_line_tolerances(tmp_path: Path):
    baseline = {**BASELINE, "tolerances": {"nhits.peak_over_eager": 0.5}}
    b, s = _files(tmp_path, {"nhits.peak_over_eager": 2.1, "similarity.dynbatch": 3.0}, baseline)
    assert gate.main(["--baseline", str(b), "--run", str(s)]) == 0
    assert gate.main(["--baseline", str(b), "--run", str(s), "--tolerance", "0.1"]) == 1


def test_update_writes_the_run_ratios_and_refuses_quick_runs(tmp_path: Path):
    b, s = _files(tmp_path, {"nhits.peak_over_eager": 5.0})
    assert gate.main(["--baseline", str(b), "--run", str(s), "--update"]) == 0
    assert json.loads(b.read_text())["ratios"] == {"nhits.peak_over_eager": 5.0}
    s.write_text(json.dumps({"run": {"quick": True}, "ratios": {}}))
    assert gate.main(["--baseline", str(b), "--run", str(s), "--update"]) == 2
