"""Deadlines, retries, failover, circuit breakers and a server that is down or hung: real sockets, real Triton."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest

from clients import (
    AsyncClient,
    CircuitBreaker,
    Client,
    DeadlineExceededError,
    InvalidInputError,
    ServerUnavailableError,
)
from models import spec

SLOW_BATCH = 256  # reservoir: 168 sequential steps of 1000 units for 256 rows, ~100 ms on 2 cores (20 ms at batch 64)


def windows(n: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    return (100 + np.cumsum(rng.standard_normal((n, spec.INPUT_SIZE)), axis=1)).astype(np.float32)


def test_a_deadline_shorter_than_a_slow_request_raises_deadline_exceeded_in_time(url):
    with Client(url, retries=0) as client:
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError, match="deadline"):
            client.reservoir(windows(SLOW_BATCH), timeout=0.02)
        assert time.monotonic() - start < 0.5
        assert client.reservoir(windows(1), timeout=30).values.shape == (1, spec.HORIZON)  # still usable


def test_the_async_client_keeps_its_deadline_too(url):
    async def run() -> float:
        async with AsyncClient(url, retries=0) as client:
            start = time.monotonic()
            with pytest.raises(DeadlineExceededError):
                await client.reservoir(windows(SLOW_BATCH), timeout=0.02)
            return time.monotonic() - start

    assert asyncio.run(run()) < 0.5


def test_a_server_that_is_down_gives_server_unavailable_within_the_timeout(dead_url):
    with Client(dead_url, timeout=2.0) as client:
        start = time.monotonic()
        with pytest.raises(ServerUnavailableError, match="no endpoint answered"):
            client.nhits(windows(1))
        assert time.monotonic() - start < 2.0


def test_the_async_client_reports_a_server_that_is_down_the_same_way(dead_url):
    async def run() -> None:
        async with AsyncClient(dead_url, timeout=2.0) as client:
            await client.nhits(windows(1))

    start = time.monotonic()
    with pytest.raises(ServerUnavailableError):
        asyncio.run(run())
    assert time.monotonic() - start < 2.0


def test_a_server_that_never_answers_cannot_make_a_call_hang(silent_url):
    with Client(silent_url, timeout=0.5, retries=1) as client:
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            client.nhits(windows(1))
        assert time.monotonic() - start < 1.5


def test_calls_fail_over_to_the_second_endpoint_and_the_first_ones_breaker_opens(dead_url, url):
    with Client([dead_url, url], failure_threshold=2, cooldown_s=60) as client:
        answers = [client.nhits(windows(2)) for _ in range(3)]
        assert [a.endpoint for a in answers] == [url] * 3
        assert [a.attempts for a in answers] == [2, 2, 1]  # third call: the open circuit skips the dead endpoint
        assert client.status() == [(dead_url, "open"), (url, "closed")]


def test_the_async_client_fails_over_the_same_way(dead_url, url):
    async def run() -> tuple[list, list]:
        async with AsyncClient([dead_url, url], failure_threshold=2, cooldown_s=60) as client:
            answers = [await client.nhits(windows(2)) for _ in range(3)]
            return answers, client.status()

    answers, status = asyncio.run(run())
    assert [a.endpoint for a in answers] == [url] * 3 and status[0] == (dead_url, "open")


def test_an_open_breaker_lets_one_health_checked_probe_through_after_its_cooldown(url):
    with Client(url, failure_threshold=1, cooldown_s=0.2) as client:
        client.endpoints[0].breaker.failure()  # as if the server had just failed
        with pytest.raises(ServerUnavailableError, match="circuit open"):
            client.nhits(windows(1))
        time.sleep(0.25)
        assert client.nhits(windows(1)).endpoint == url  # the probe: fresh connection, model ready, then the call
        assert client.status() == [(url, "closed")]


def test_a_circuit_breaker_opens_after_n_failures_and_half_opens_after_the_cooldown():
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=0.05)
    for _ in range(2):
        breaker.failure()
    assert breaker.acquire() == CircuitBreaker.CLOSED
    breaker.failure()
    assert breaker.state == CircuitBreaker.OPEN and breaker.acquire() is None
    time.sleep(0.06)
    assert breaker.acquire() == CircuitBreaker.HALF_OPEN
    assert breaker.acquire() is None  # one probe at a time
    breaker.failure()  # the probe failed: open again for another cooldown
    assert breaker.state == CircuitBreaker.OPEN
    time.sleep(0.06)
    assert breaker.acquire() == CircuitBreaker.HALF_OPEN
    breaker.success()
    assert breaker.state == CircuitBreaker.CLOSED and breaker.failures == 0


def test_unavailable_endpoints_are_retried_with_backoff_then_reported(dead_url):
    with Client(dead_url, retries=3, backoff_s=0.05, failure_threshold=10, timeout=5.0) as client:
        start = time.monotonic()
        with pytest.raises(ServerUnavailableError, match=r"after 4 attempt\(s\)"):
            client.nhits(windows(1))
        elapsed = time.monotonic() - start
    # pauses of 0.05, 0.1, 0.2 s with half of each random: at least 0.175 s, well under the 5 s deadline
    assert 0.17 < elapsed < 2.0


def test_input_the_server_rejects_is_never_retried(url, caplog):
    with Client(url, validate=False, retries=3) as client, caplog.at_level(logging.INFO, logger="clients"):
        with pytest.raises(InvalidInputError):
            client.nhits(np.full((2, spec.INPUT_SIZE), np.nan, np.float32))
        assert not [r for r in caplog.records if "attempt" in r.getMessage()]
        assert client.status() == [(url, "closed")]
