"""Fixtures of the reliability tests: the request pool with its ONNX Runtime answers, and a folder for the
figures the tests record (build/reliability/, quoted by RELIABILITY.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models import spec
from reliability.reference import Reference, build_workload

RESULTS = spec.ROOT / "build" / "reliability"


@pytest.fixture(scope="session")
def reference(repo: Path) -> Reference:
    return Reference(repo)


@pytest.fixture(scope="session")
def workload(repo: Path, artifacts: Path, reference: Reference):
    return build_workload(repo, artifacts, n=16, n_sequences=4, sequence_len=6, ref=reference)


@pytest.fixture(scope="session")
def record():
    """record(name, dict): merge observations into build/reliability/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)

    def write(name: str, data: dict) -> None:
        path = RESULTS / f"{name}.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        old.update(data)
        path.write_text(json.dumps(old, indent=2, default=str) + "\n")

    return write
