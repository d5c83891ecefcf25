"""System shared memory: same answers as plain transfer, regions registered once, none left after close."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from clients import Client
from clients.shm import SharedMemoryClient, compare
from common.triton import admin_headers
from models import spec


def server_regions(triton) -> list[str]:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    status = client.get_system_shared_memory_status(headers=admin_headers(triton.key, "grpc"), as_json=True)
    client.close()
    return sorted(status.get("regions", {}))


def test_shared_memory_results_equal_plain_results_for_large_batches(triton, url, protocol, samples):
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((spec.MODELS["similarity"].max_batch_size, spec.EMBED_DIM), dtype=np.float32)
    with Client(url) as plain, SharedMemoryClient(url, key=triton.key, protocol=protocol) as fast:
        a, b = plain.nhits(samples["windows_1000"]), fast.nhits(samples["windows_1000"])
        np.testing.assert_array_equal(a.values, b.values)
        assert b.endpoint == url and b.values.shape == (1000, spec.HORIZON)
        a, b = plain.similarity(queries), fast.similarity(queries)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.scores, b.scores)
        small = fast.nhits(samples["window"][:3])  # a smaller batch reuses the same regions
        np.testing.assert_array_equal(small.values, plain.nhits(samples["window"][:3]).values)
    assert not [r for r in server_regions(triton) if r.startswith(fast.prefix)]


def test_regions_are_registered_once_reused_and_unregistered_on_close(triton, url, protocol, samples):
    before = server_regions(triton)  # other clients' regions are theirs to close
    with SharedMemoryClient(url, key=triton.key, protocol=protocol) as fast:
        for _ in range(3):
            fast.nhits(samples["window"])
        ours = fast.region_names()
        assert len(ours) == 2  # one input and one output region for nhits, whatever the number of calls
        assert set(ours) <= set(server_regions(triton))
        first = fast.nhits(samples["window"]).values
        np.testing.assert_array_equal(first, fast.nhits(samples["window"]).values)
    assert not [r for r in server_regions(triton) if r.startswith(fast.prefix)]
    assert server_regions(triton) == before


def test_the_shm_benchmark_reports_both_transfers_for_both_cases(triton):
    before = server_regions(triton)
    report = compare(triton.grpc_url, 2, key=triton.key, warmup=1)
    assert set(report["models"]) == {"nhits", "similarity"}
    for row in report["models"].values():
        assert row["plain_ms"]["p50"] > 0 and row["shm_ms"]["p50"] > 0 and row["max_abs_diff"] == 0.0
    assert report["models"]["nhits"]["rows"] == 1000 and report["models"]["similarity"]["rows"] == 256
    assert server_regions(triton) == before


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_after_a_server_restart_the_regions_are_registered_again_and_the_endpoint_is_not_blamed(
    repo, samples, tmp_path, protocol
):
    """call, restart the server (it forgets every registration), call: the second call answers the same,
    registers this client's regions again once, and leaves the endpoint's circuit breaker closed with no failure."""
    from reliability.faults import copy_repo, make_server, start_again

    server = make_server(copy_repo(repo, tmp_path / "repo", ("nhits",)), tmp_path / "run")
    server.start(timeout=120)
    try:
        url = f"{protocol}://{server.grpc_url if protocol == 'grpc' else server.http_url}"
        with SharedMemoryClient(url, key=server.key, protocol=protocol, retries=0) as fast:
            first = fast.nhits(samples["window"])
            server.stop()
            start_again(server)
            assert not [r for r in server_regions(server) if r.startswith(fast.prefix)]  # forgotten
            again = fast.nhits(samples["window"])
            np.testing.assert_array_equal(first.values, again.values)
            assert again.attempts == 1
            (ep,) = fast.endpoints
            assert ep.breaker.state == ep.breaker.CLOSED and ep.breaker.failures == 0
            assert set(fast.region_names()) <= set(server_regions(server))
    finally:
        server.stop()
