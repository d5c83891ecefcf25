"""Fixtures for the client tests: endpoints of the session's real Triton, ONNX Runtime on the same files, data."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from clients import ranges_from_repository
from models import data, spec
from repository.layout import served_file
from serving.server import free_port

PROTOCOLS = ("grpc", "http")


def url_of(triton, protocol: str) -> str:
    return f"{protocol}://{triton.grpc_url if protocol == 'grpc' else triton.http_url}"


@pytest.fixture(params=PROTOCOLS)
def protocol(request) -> str:
    return request.param


@pytest.fixture
def url(triton, protocol: str) -> str:
    return url_of(triton, protocol)


@pytest.fixture
def dead_url(protocol: str) -> str:
    """An endpoint with nothing listening (the port was free a moment ago)."""
    return f"{protocol}://127.0.0.1:{free_port()}"


@pytest.fixture
def silent_url(protocol: str):
    """An endpoint that accepts connections and never answers: a hung server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"{protocol}://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="session")
def ranges(repo: Path) -> dict:
    return ranges_from_repository(repo)


@pytest.fixture(scope="session")
def onnx_runtime(repo: Path):
    """run(model, feed) -> list of outputs from ONNX Runtime in this process, on the served ONNX file."""
    sessions: dict[str, ort.InferenceSession] = {}

    def run(model: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if model not in sessions:
            path = served_file(repo, model)  # the file the cpu config serves (similarity: model.int8.onnx)
            sessions[model] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [t.name for t in spec.MODELS[model].outputs]
        return dict(zip(names, sessions[model].run(names, feed), strict=True))

    return run


@pytest.fixture(scope="session")
def samples(artifacts: Path) -> dict[str, np.ndarray]:
    """Test-split inputs: windows and their actuals, queries, user ids (B, 1)."""
    x, y = data.load_windows(artifacts, "test")
    return {
        "window": x[:6],
        "actual": y[:6],
        "query": data.load_queries(artifacts, "test", 6),
        "user_id": data.load_user_ids(artifacts, "test", 6).reshape(-1, 1),
        "windows_1000": np.resize(x, (1000, spec.INPUT_SIZE)) * np.linspace(0.5, 1.5, 1000, dtype=np.float32)[:, None],
    }
