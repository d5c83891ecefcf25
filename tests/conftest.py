"""Shared fixtures: the small test artifacts and one real Triton server for the whole session.

`make test` runs `make export-small` first, which trains and exports the models at test sizes
into build/test/ (override with TEST_ROOT). Nothing here mocks Triton, ONNX Runtime or clients.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from models import spec
from serving.server import TritonServer, free_port

TEST_ROOT = Path(os.environ.get("TEST_ROOT", spec.ROOT / "build" / "test")).resolve()


def snapshot(repo: Path) -> dict[str, str]:
    """Every path under a repository -> the sha256 of its bytes ("dir" for a folder): equal means byte-identical."""
    return {
        p.relative_to(repo).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(repo.rglob("*"))
    }


def _need(path: Path) -> Path:
    if not path.exists():
        raise pytest.UsageError(f"{path} is missing: run `make export-small` (or `make test`, which runs it) first")
    return path


@pytest.fixture(scope="session")
def artifacts() -> Path:
    return _need(TEST_ROOT / "artifacts" / "checkpoints").parent


@pytest.fixture(scope="session")
def repo() -> Path:
    return _need(TEST_ROOT / "model_repository" / "nhits" / "1" / spec.ONNX_FP32).parents[2]


@pytest.fixture(scope="session")
def triton(repo: Path):
    """One real tritonserver (cpu target) on free loopback ports, shared by every server test."""
    run_dir = TEST_ROOT / f"triton-run-{os.getpid()}"  # two pytest sessions must not share a stub
    server = TritonServer(
        repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        run_dir=run_dir,
    )
    server.start(timeout=180)
    yield server
    server.stop()
    shutil.rmtree(run_dir, ignore_errors=True)
