"""Priority lanes on a real Triton serving the `cpu_lanes` configs (nhits, reservoir and forecast_blend with
`priority_levels: 3`; the forecast ensemble passes a request's priority and timeout to its steps).

The instance is kept busy with bulk requests of 256 windows in the default lane: each is one execution of the
reservoir (~100 ms or more), so requests queued behind them wait for each other, which the tests observe
by the order in which answers come back and by what the server refuses. Nothing is mocked.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients import Client, Priority, QueueFullError, QueueTimeoutError, RejectedError
from clients.errors import DeadlineExceededError, from_triton
from models import spec
from serving.server import TritonServer, free_port

BULK = 256  # rows per bulk request: the reservoir's max_batch_size, one execution each
BACKGROUND_QUEUE = 32  # max_queue_size of the background lane in the committed configs


@pytest.fixture(scope="module")
def lanes(repo: Path, tmp_path_factory):
    """A second server of the same repository with `--model-config-name=cpu_lanes`."""
    server = TritonServer(
        repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        run_dir=tmp_path_factory.mktemp("triton-lanes"),
        config_name="cpu_lanes",
    )
    server.start(timeout=180)
    yield server
    server.stop()


def critical_call(call):
    """A critical request behind bulk work: answered, or refused once queued past its lane's 10 ms (None);
    either way not behind the queue."""
    try:
        return call()
    except QueueTimeoutError:
        return None


def windows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (100 + np.cumsum(rng.standard_normal((n, spec.INPUT_SIZE)), axis=1)).astype(np.float32)


def flood(pool: ThreadPoolExecutor, client: Client, n: int, done: dict, model: str = "reservoir") -> list:
    """n bulk requests in the default lane; done[i] = the time request i's answer came back."""

    def one(i: int) -> None:
        client.call(model, windows(BULK, seed=i), timeout=60)
        done[i] = time.monotonic()

    futures = [pool.submit(one, i) for i in range(n)]
    time.sleep(0.3)  # every bulk request is queued, the first executing
    return futures


def test_queue_refusals_map_to_named_errors_that_are_never_retried():
    full = from_triton(
        InferenceServerException("[request id: <id_unknown>] Exceeds maximum queue size", "StatusCode.UNAVAILABLE"), "m"
    )
    late = from_triton(InferenceServerException("Request timeout expired", "StatusCode.UNAVAILABLE"), "m")
    assert isinstance(full, QueueFullError) and isinstance(full, RejectedError)
    assert isinstance(late, QueueTimeoutError) and isinstance(late, DeadlineExceededError)
    assert "Exceeds maximum queue size" in str(full) and "request id" not in str(full)


@pytest.mark.parametrize("model", ["reservoir", "forecast"])  # forecast: through the ensemble's reservoir step
def test_a_critical_request_overtakes_queued_bulk_reservoir_requests(lanes, model):
    done: dict = {}
    with Client(lanes.grpc_url, timeout=60) as client, ThreadPoolExecutor(12) as pool:
        bulk = flood(pool, client, 12, done)
        sent = time.monotonic()
        got = critical_call(lambda: client.call(model, windows(1, seed=99), priority=Priority.CRITICAL, timeout=5))
        critical = time.monotonic()
        for f in bulk:
            f.result()
    assert got is None or got.values.shape == (1, spec.HORIZON)
    before = sorted(i for i, t in done.items() if sent <= t < critical)  # answered while it was in the server
    # FIFO would answer it after every queued one; the lane puts it next, behind what the instances were executing
    assert len(before) <= 3, (
        f"{model}: {len(before)} bulk requests queued before it were answered first ({critical - sent:.2f} s)"
    )


def test_a_critical_request_queued_past_its_lane_timeout_is_refused_not_answered_late(lanes):
    """10 ms is the critical lane's queue timeout and a bulk execution takes far longer, so a critical request
    that finds every instance busy is refused. One that arrives as an instance frees is answered at once, which
    is right too: the test sends again (at most 5 times) until one had to queue."""
    refused_after = None
    for attempt in range(5):
        done: dict = {}
        with Client(lanes.grpc_url, timeout=60) as client, ThreadPoolExecutor(16) as pool:
            bulk = flood(pool, client, 16, done)
            start = time.monotonic()
            try:
                client.reservoir(windows(1, seed=97 + attempt), priority=Priority.CRITICAL, timeout=5)
            except QueueTimeoutError as exc:
                assert "Request timeout expired" in str(exc)
                refused_after = time.monotonic() - start
            for f in bulk:
                f.result()
        if refused_after is not None:
            break
    assert refused_after is not None, "5 critical requests behind 16 bulk ones were all answered: none queued"
    assert refused_after < 1.0, f"refused only after {refused_after:.2f} s"


def test_a_request_carries_its_deadline_as_the_servers_queue_timeout(lanes):
    """A normal request with a 0.25 s deadline behind ~1 s of queued work: the server refuses it unanswered, or
    the client's own deadline fires first; either way no answer and no retry."""
    done: dict = {}
    with Client(lanes.grpc_url, timeout=60) as client, ThreadPoolExecutor(8) as pool:
        bulk = flood(pool, client, 8, done)
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            client.reservoir(windows(1, seed=96), timeout=0.25)
        assert time.monotonic() - start < 0.6
        for f in bulk:
            f.result()
    raw = grpcclient.InferenceServerClient(lanes.grpc_url)
    try:  # raw tritonclient: a per-request timeout the lane refuses, reported by the server itself
        with ThreadPoolExecutor(8) as pool, Client(lanes.grpc_url, timeout=60) as client:
            bulk = flood(pool, client, 8, {})
            x = grpcclient.InferInput("window", [1, spec.INPUT_SIZE], "FP32")
            x.set_data_from_numpy(windows(1, seed=95))
            with pytest.raises(InferenceServerException, match="Request timeout expired"):
                raw.infer("reservoir", [x], timeout=50_000, client_timeout=30)  # 50 ms in the queue at most
            for f in bulk:
                f.result()
    finally:
        raw.close()


def test_a_full_background_queue_refuses_a_flood_with_a_clear_error(lanes):
    done: dict = {}
    n = 2 * BACKGROUND_QUEUE
    outcomes: list = []
    with Client(lanes.grpc_url, timeout=60, retries=2) as client, ThreadPoolExecutor(n) as pool:
        bulk = flood(pool, client, 6, done)

        def background(i: int) -> object:
            t0 = time.monotonic()
            try:
                client.reservoir(windows(1, seed=1000 + i), priority=Priority.BACKGROUND, timeout=30)
                return "answered"
            except QueueFullError as exc:
                return exc, time.monotonic() - t0

        with ThreadPoolExecutor(n) as burst:
            outcomes = list(burst.map(background, range(n)))
        for f in bulk:
            f.result()
    refused = [o for o in outcomes if o != "answered"]
    assert len(refused) >= n - BACKGROUND_QUEUE - 4, f"only {len(refused)} of {n} refused"
    assert outcomes.count("answered") >= BACKGROUND_QUEUE // 2, "the queued background requests were not served"
    exc, after = refused[0]
    assert "Exceeds maximum queue size" in str(exc) and "reservoir" in str(exc)
    assert max(t for _, t in refused) < 1.0, "a refusal waited for the queue instead of coming at once"
