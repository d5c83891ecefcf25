"""perf/perf.mk gives every perf command a make target with help text, and the top Makefile includes it."""

from __future__ import annotations

import re

from models import spec

PERF_MK = spec.ROOT / "perf" / "perf.mk"


def test_perf_mk_has_the_targets_with_help_text():
    text = PERF_MK.read_text()
    targets = dict(re.findall(r"^([a-z-]+):[^\n]*## (.+)$", text, flags=re.M))
    for name in ("perf", "perf-small", "perf-search", "perf-report", "perf-gate", "perf-baseline"):
        assert targets.get(name), f"{name} has no `## help` target in perf/perf.mk"


def test_each_target_runs_a_perf_module():
    text = PERF_MK.read_text()
    for module in ("perf.run", "perf.model_analyzer", "perf.report", "perf.gate"):
        assert f"-m {module}" in text


def test_the_top_makefile_includes_perf_mk():
    assert "perf/perf.mk" in (spec.ROOT / "Makefile").read_text()
