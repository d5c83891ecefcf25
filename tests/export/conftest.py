"""Small export artifacts for the export and calibration tests, and tiny ONNX fixtures.

`make test` runs `make export-small` first, which leaves trained models, ONNX files,
INT8 files and reports in build/test/. When they are missing, `small_export` runs
the same stages itself (minutes, once); everything else here reads those files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models import spec

TEST_ROOT = Path(os.environ.get("TEST_ROOT", spec.ROOT / "build" / "test")).resolve()
ARTIFACTS = TEST_ROOT / "artifacts"
REPO = TEST_ROOT / "model_repository"


def run_module(module: str, *args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`python -m module args...` from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=spec.ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _stages() -> list[tuple[str, ...]]:
    a, r = str(ARTIFACTS), str(REPO)
    return [
        ("repository.layout", "--repo", str(spec.MODEL_REPOSITORY), "--copy-configs-to", r),
        ("models.train", "--out", a, "--small"),
        ("export.onnx_export", "--artifacts", a, "--repo", r),
        ("calibration.calibrate", "--artifacts", a, "--repo", r),
        ("export.benchmark", "--artifacts", a, "--repo", r, "--small"),
        ("export.summary", "--artifacts", a, "--repo", r),
    ]


def _complete() -> bool:
    reports = ARTIFACTS / "reports"
    files = [reports / f for f in ("export.json", "calibration.json", "benchmark.json")]
    files += [ARTIFACTS / "calibration" / "manifest.json"]
    from export.graphs import ALL_MODELS

    files += [spec.version_dir(m, REPO) / f for m in ALL_MODELS for f in (spec.ONNX_FP32, spec.ONNX_INT8)]
    return all(f.is_file() for f in files)


@pytest.fixture(scope="session")
def small_export() -> tuple[Path, Path]:
    """(artifacts, repo) of `make export-small`, made here when missing."""
    if not _complete():
        for stage in _stages():
            proc = run_module(*stage)
            if proc.returncode != 0:
                pytest.fail(f"`python -m {' '.join(stage)}` failed: {proc.stderr.strip().splitlines()[-1:]}")
    return ARTIFACTS, REPO


@pytest.fixture(scope="session")
def artifacts(small_export: tuple[Path, Path]) -> Path:
    return small_export[0]


@pytest.fixture(scope="session")
def repo(small_export: tuple[Path, Path]) -> Path:
    return small_export[1]
