"""A server that is not running, or is killed mid-test, gives a clear client error within the
client's timeout instead of a hang."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from models import spec
from serving.server import TritonServer, free_port

TIMEOUT_S = 3.0


def blend_request(module):
    inputs = []
    for name in ("nhits_forecast", "reservoir_forecast"):
        t = module.InferInput(name, [1, spec.HORIZON], "FP32")
        t.set_data_from_numpy(np.ones((1, spec.HORIZON), np.float32))
        inputs.append(t)
    return inputs


def call(protocol: str, url: str):
    if protocol == "grpc":
        c = grpcclient.InferenceServerClient(url)
        return c.infer("forecast_blend", blend_request(grpcclient), client_timeout=TIMEOUT_S)
    c = httpclient.InferenceServerClient(url, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)
    return c.infer("forecast_blend", blend_request(httpclient))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_server_that_is_not_running_fails_fast_with_a_clear_error(protocol):
    url = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises((InferenceServerException, ConnectionError, OSError)) as err:
        call(protocol, url)
    assert time.monotonic() - start < TIMEOUT_S + 2
    assert any(word in str(err.value).lower() for word in ("unavailable", "refused", "connect")), str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_server_killed_mid_test_fails_the_client_within_its_timeout(repo, tmp_path: Path, protocol):
    small = tmp_path / "repo"
    shutil.copytree(repo / "forecast_blend", small / "forecast_blend")
    server = TritonServer(
        small, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), run_dir=tmp_path
    )
    server.start(timeout=120)
    url = server.grpc_url if protocol == "grpc" else server.http_url
    try:
        assert call(protocol, url).as_numpy("forecast").shape == (1, spec.HORIZON)
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        start = time.monotonic()
        with pytest.raises((InferenceServerException, ConnectionError, OSError)):
            call(protocol, url)
        assert time.monotonic() - start < TIMEOUT_S + 2
    finally:
        server.stop()
