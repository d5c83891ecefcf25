"""Fixtures of the GPU tooling tests: one reduced CPU probe run shared by the whole session."""

from __future__ import annotations

import json

import pytest

from perf import gpu_probe


@pytest.fixture(scope="session")
def probe_doc(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_probe") / "probe.json"
    assert gpu_probe.main(["--device", "cpu", "--reduced", "--out", str(out)]) == 0
    return json.loads(out.read_text())
