"""The real-data profile at test sizes (`make export-small-real`: 600 MovieLens movies, the real series) and one
real Triton over its repository, shared by the tests of this folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from models import spec
from serving.server import TritonServer, free_port

TEST_REAL_ROOT = Path(os.environ.get("TEST_REAL_ROOT", spec.ROOT / "build" / "test-real")).resolve()


def _need(path: Path) -> Path:
    if not path.exists():
        raise pytest.UsageError(
            f"{path} is missing: run `make export-small-real` (or `make test`, which runs it) first"
        )
    return path


@pytest.fixture(scope="session")
def real_artifacts() -> Path:
    return _need(TEST_REAL_ROOT / "artifacts" / "data" / "texts.json").parents[1]


@pytest.fixture(scope="session")
def real_repo() -> Path:
    return _need(TEST_REAL_ROOT / "model_repository" / "text_encoder" / "1" / spec.ONNX_FP32).parents[2]


@pytest.fixture(scope="session")
def triton_real(real_repo: Path):
    run_dir = TEST_REAL_ROOT / f"triton-run-{os.getpid()}"
    server = TritonServer(
        real_repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), run_dir=run_dir
    )
    server.start(timeout=180)
    yield server
    server.stop()
    shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def tokenizer(real_artifacts: Path):
    from models import real_data

    return real_data.load_tokenizer(real_data.tokenizer_json(real_artifacts))


@pytest.fixture(scope="session")
def reference(real_artifacts: Path):
    """SentenceTransformer.encode on the packaged all-MiniLM-L6-v2: the reference of every encoder check."""
    from models import real_data

    return real_data.sentence_transformer(real_artifacts)
