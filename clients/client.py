"""Production clients: sync `Client` and asyncio `AsyncClient` with the same signatures, over gRPC or HTTP.

    with Client(["gpu-host:8001", "127.0.0.1:8001"], timeout=2.0) as c:   # failover in this order
        f = c.nhits(windows)                 # Forecast(values (B, 24), endpoint=..., attempts=..., latency_s=...)
        top = c.recommend([3, 14, 15])       # TopK(ids (3, 10), scores (3, 10))
        many = c.map("nhits", windows_1000)  # split by the model's batch size, sent concurrently, in order

Every call: inputs are checked on the client first (same messages as the server, InvalidInputError, nothing
sent); `timeout` is the deadline of the whole call; each attempt gets what is left (or `attempt_timeout`, if
shorter, so a hung endpoint cannot eat the whole deadline before failover). Unavailable endpoints and missed
attempt deadlines are retried with exponential backoff and jitter, at most `retries` extra rounds over the
endpoints; invalid input and other server errors are never retried. Each endpoint has a circuit breaker:
`failure_threshold` consecutive failures open it, after `cooldown_s` one caller probes it (fresh connection,
model-ready health check) and closes it again on success.

Priority lanes: every call carries `priority` (`Priority.CRITICAL` / `NORMAL` / `BACKGROUND`, default the
client's `priority`, else the server's default lane; `map` and `forecast_assets` default to BACKGROUND) and
what is left of its deadline as Triton's per-request timeout. A request still queued past it is refused by the
server (`QueueTimeoutError`), a full background queue refuses at once (`QueueFullError`); neither is retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from clients import (
    forecast,
    forecast_blend,
    nhits,
    recommend,
    reservoir,
    search,
    similarity,
    text_encoder,
    tokenizer,
    user_embedding,
)
from clients.errors import RETRYABLE, ClientError, DeadlineExceededError, RejectedError, ServerUnavailableError
from clients.op import Op
from clients.results import Answer, Embedding, EnsembleForecast, Forecast, Tokens, TopK, concat
from clients.transport import AsyncTransport, Priority, Transport, model_limits, parse_url
from clients.validate import Ranges, check

log = logging.getLogger("clients")

DEFAULT_TIMEOUT_S = 10.0
OPS: dict[str, Op] = {
    m.OP.name: m.OP
    for m in (
        nhits,
        reservoir,
        forecast_blend,
        similarity,
        user_embedding,
        tokenizer,
        text_encoder,
        forecast,
        recommend,
        search,
    )
}


def op_for(model: str | Op) -> Op:
    if isinstance(model, Op):
        return model
    try:
        return OPS[model]
    except KeyError:
        raise ValueError(f"unknown model {model!r}: expected one of {', '.join(OPS)}") from None


def ranges_from_repository(repo: Path | str) -> Ranges:
    """Valid id ranges the exporter wrote into user_embedding's ONNX metadata ("valid_range.user_id" = "lo,hi")."""
    import onnx

    from models import spec

    path = spec.served_version_dir("user_embedding", Path(repo)) / spec.ONNX_FP32
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `make export` (or pass n_users)")
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    ranges = {}
    for key, value in props.items():
        if key.startswith("valid_range."):
            lo, hi = (int(v) for v in value.split(","))
            ranges[key.removeprefix("valid_range.")] = (lo, hi)
    return ranges


# ---------------------------------------------------------------------------------- resilience


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 2  # extra rounds over the endpoints after the first
    backoff_s: float = 0.05  # first pause; doubles every round
    backoff_max_s: float = 1.0

    def delay(self, round_: int) -> float:
        """Pause before round `round_` (1, 2, ...): exponential with 'equal jitter' (half fixed, half random)."""
        d = min(self.backoff_max_s, self.backoff_s * 2 ** (round_ - 1))
        return d / 2 + random.uniform(0, d / 2)


class CircuitBreaker:
    """closed -> (threshold consecutive failures) -> open -> (cooldown) -> half-open: one probe -> closed or open."""

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"

    def __init__(self, failure_threshold: int = 3, cooldown_s: float = 5.0):
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.state = self.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> str | None:
        """None: skip this endpoint now; CLOSED: go ahead; HALF_OPEN: go ahead as the one probe."""
        with self._lock:
            if self.state == self.CLOSED:
                return self.CLOSED
            # open and cooled down, or a probe that never reported back (its caller died) is as old as a cooldown
            if time.monotonic() - self.opened_at >= self.cooldown_s:
                self.state, self.opened_at = self.HALF_OPEN, time.monotonic()
                return self.HALF_OPEN
            return None  # open and cooling down, or another caller's probe is in flight

    def success(self) -> None:
        with self._lock:
            self.state, self.failures = self.CLOSED, 0

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.state == self.HALF_OPEN or self.failures >= self.failure_threshold:
                self.state, self.opened_at = self.OPEN, time.monotonic()

    def retry_in(self) -> float:
        return max(0.0, self.cooldown_s - (time.monotonic() - self.opened_at))


class Endpoint:
    """One server address, its circuit breaker and its transport (created lazily, renewed by a probe)."""

    def __init__(self, url: str, protocol: str, breaker: CircuitBreaker, asynchronous: bool):
        self.protocol, self.hostport = parse_url(url, protocol)
        self.url = f"{self.protocol}://{self.hostport}"
        self.breaker = breaker
        self._factory = AsyncTransport if asynchronous else Transport
        self.transport = self._factory(self.protocol, self.hostport)

    def renew(self):
        """A fresh transport: gRPC channels back off reconnecting for up to minutes after a failure."""
        old, self.transport = self.transport, self._factory(self.protocol, self.hostport)
        return old

    def __repr__(self) -> str:
        return f"Endpoint({self.url}, {self.breaker.state})"


class _Attempts:
    """The retry / failover plan of one call: which endpoint next, with how much time, or how long to pause."""

    def __init__(self, model: str, endpoints: list[Endpoint], policy: RetryPolicy, timeout: float, cap: float | None):
        self.model = model
        self.endpoints = endpoints
        self.policy = policy
        self.timeout = timeout
        self.cap = cap
        self.start = time.monotonic()
        self.deadline = self.start + timeout
        self.count = 0
        self.errors: list[ClientError] = []
        self.skipped: list[Endpoint] = []

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def plan(self) -> Iterator[float | tuple[Endpoint, float, bool]]:
        """Yields (endpoint, attempt timeout, is_probe) to try, or a pause in seconds; ends when out of tries."""
        for round_ in range(self.policy.retries + 1):
            if round_:
                pause = self.policy.delay(round_)
                if pause >= self.remaining():
                    return
                yield pause
            tried = False
            for ep in self.endpoints:
                left = self.remaining()
                if left <= 0:
                    return
                state = ep.breaker.acquire()
                if state is None:
                    if ep not in self.skipped:
                        self.skipped.append(ep)
                    continue
                tried = True
                self.count += 1
                yield ep, min(left, self.cap) if self.cap else left, state == CircuitBreaker.HALF_OPEN
            if not tried:
                return

    def failed(self, ep: Endpoint, exc: ClientError) -> None:
        was = ep.breaker.state
        ep.breaker.failure()
        self.errors.append(exc)
        log.info("%s: attempt %d failed: %s", self.model, self.count, exc)
        if ep.breaker.state == CircuitBreaker.OPEN and was != CircuitBreaker.OPEN:
            log.warning("%s: circuit opened after %d failure(s) in a row", ep.url, ep.breaker.failures)

    def answer(self, ep: Endpoint) -> dict[str, Any]:
        ep.breaker.success()
        return {
            "model": self.model,
            "endpoint": ep.url,
            "attempts": self.count,
            "latency_s": time.monotonic() - self.start,
        }

    def error(self) -> ClientError:
        """The error to raise once the plan is exhausted: the kind of the last failure, every failure named."""
        counts: dict[str, int] = {}
        for e in self.errors:
            counts[str(e)] = counts.get(str(e), 0) + 1
        parts = [m if n == 1 else f"{m} (x{n})" for m, n in counts.items()]
        parts += [f"{ep.url}: circuit open (next probe in {ep.breaker.retry_in():.1f} s)" for ep in self.skipped]
        detail = "; ".join(parts) or "no attempt fitted in the deadline"
        if self.errors:
            kind = type(self.errors[-1])
        elif self.skipped:
            kind = ServerUnavailableError
        else:
            kind = DeadlineExceededError
        if kind is ServerUnavailableError or self.remaining() > 0 or not self.errors:
            summary = f"{self.model}: no endpoint answered after {self.count} attempt(s) in {self.timeout:.3g} s"
        else:
            summary = f"{self.model}: deadline of {self.timeout:.3g} s exceeded after {self.count} attempt(s)"
        return kind(f"{summary}: {detail}")


def _unavailable_probe(ep: Endpoint, model: str) -> ServerUnavailableError:
    return ServerUnavailableError(f"{model} at {ep.url}: health check failed (server or model not ready)")


# ---------------------------------------------------------------------------------- shared setup


class _Base:
    _asynchronous = False

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        protocol: str = "grpc",
        timeout: float = DEFAULT_TIMEOUT_S,
        attempt_timeout: float | None = None,
        retries: int = 2,
        backoff_s: float = 0.05,
        failure_threshold: int = 3,
        cooldown_s: float = 5.0,
        n_users: int | None = None,
        ranges: Ranges | None = None,
        validate: bool = True,
        concurrency: int = 4,
        priority: int | None = None,
    ):
        urls = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not urls:
            raise ValueError("at least one endpoint is needed")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 s, got {timeout}")
        self.endpoints = [
            Endpoint(u, protocol, CircuitBreaker(failure_threshold, cooldown_s), self._asynchronous) for u in urls
        ]
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.policy = RetryPolicy(retries=retries, backoff_s=backoff_s)
        self.ranges: Ranges = dict(ranges or {})
        if n_users is not None:
            self.ranges[user_embedding.MODEL.inputs[0].name] = (0, int(n_users))
        self.validate = validate
        self.concurrency = concurrency
        self.priority = priority  # None: the server's default lane
        self._limits: dict[str, tuple[int, list[int]]] = {}
        self._pool: ThreadPoolExecutor | None = None  # sync batching only
        self._pool_lock = threading.Lock()

    def _prepare(self, model: str | Op, args: tuple) -> tuple[Op, dict[str, np.ndarray]]:
        op = op_for(model)
        arrays = op.encode(*args)
        if self.validate:
            op.check(arrays, self.ranges)
        return op, arrays

    def _attempts(self, op: Op, timeout: float | None) -> _Attempts:
        return _Attempts(op.name, self.endpoints, self.policy, timeout or self.timeout, self.attempt_timeout)

    def _priority(self, priority: int | None) -> int:
        """The priority a request carries: the call's, else the client's; 0 = the model's default lane."""
        p = self.priority if priority is None else priority
        if p is not None and int(p) < 0:
            raise ValueError(f"priority must be >= 0 (1 is the highest lane), got {p}")
        return 0 if p is None else int(p)

    def _whole(self, op: Op, inputs: tuple) -> dict[str, np.ndarray]:
        """A batch about to be split, checked as a whole: a bad row is named by its index in the caller's array."""
        arrays = op.encode(*inputs)
        if self.validate:
            check(replace(op.spec, max_batch_size=0), arrays, self.ranges, op.step)
        return arrays

    @staticmethod
    def _cut(arrays: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
        n = len(next(iter(arrays.values())))
        return [{k: v[i : i + size] for k, v in arrays.items()} for i in range(0, max(n, 1), size)]

    def _batch_size(self, op: Op, batch_size: int | str | None, limits) -> int:
        """`limits()` -> (max_batch_size, preferred sizes) is only asked when the size is not given as an int."""
        if isinstance(batch_size, int):
            size, max_batch = batch_size, op.spec.max_batch_size
        elif batch_size in (None, "preferred", "max"):
            max_batch, preferred = limits()
            size = max_batch if batch_size == "max" or not preferred else max(preferred)
        else:
            raise ValueError(f"batch_size must be an int, 'preferred' or 'max', got {batch_size!r}")
        if size <= 0 or (max_batch and size > max_batch):
            raise ValueError(f"batch_size {size} is outside [1, {max_batch}] for {op.name}")
        return size

    def status(self) -> list[tuple[str, str]]:
        """(endpoint url, circuit state) for every endpoint, in failover order."""
        return [(ep.url, ep.breaker.state) for ep in self.endpoints]


# ---------------------------------------------------------------------------------- sync


class Client(_Base):
    """Blocking client; thread-safe. `endpoints`: 'host:port', 'grpc://host:port' or 'http://host:port', or a list
    of them in failover order."""

    # -- models -------------------------------------------------------------------------------
    def nhits(self, window: Any, *, timeout: float | None = None, priority: int | None = None) -> Forecast:
        """window (B, 168) float32 -> Forecast (B, 24)."""
        return self.call(nhits.OP, window, timeout=timeout, priority=priority)

    def reservoir(self, window: Any, *, timeout: float | None = None, priority: int | None = None) -> Forecast:
        """window (B, 168) float32 -> Forecast (B, 24)."""
        return self.call(reservoir.OP, window, timeout=timeout, priority=priority)

    def forecast_blend(
        self, nhits_forecast: Any, reservoir_forecast: Any, *, timeout: float | None = None, priority: int | None = None
    ) -> Forecast:
        """two (B, 24) float32 forecasts -> their blend, Forecast (B, 24)."""
        return self.call(forecast_blend.OP, nhits_forecast, reservoir_forecast, timeout=timeout, priority=priority)

    def similarity(self, query: Any, *, timeout: float | None = None, priority: int | None = None) -> TopK:
        """query (B, 384) float32 -> TopK ids (B, 10) int64, scores (B, 10) float32."""
        return self.call(similarity.OP, query, timeout=timeout, priority=priority)

    def user_embedding(self, user_ids: Any, *, timeout: float | None = None, priority: int | None = None) -> Embedding:
        """user ids (B,) or (B, 1) int64 -> Embedding (B, 384)."""
        return self.call(user_embedding.OP, user_ids, timeout=timeout, priority=priority)

    def forecast(self, window: Any, *, timeout: float | None = None, priority: int | None = None) -> EnsembleForecast:
        """Ensemble: window (B, 168) -> blended forecast (B, 24) plus the nhits and reservoir forecasts."""
        return self.call(forecast.OP, window, timeout=timeout, priority=priority)

    def recommend(self, user_ids: Any, *, timeout: float | None = None, priority: int | None = None) -> TopK:
        """Ensemble: user ids (B,) or (B, 1) int64 -> TopK of the catalog for each user."""
        return self.call(recommend.OP, user_ids, timeout=timeout, priority=priority)

    def tokenizer(self, texts: Any, *, timeout: float | None = None, priority: int | None = None) -> Tokens:
        """texts (a str or a list of B) -> Tokens ids, mask (B, T) int64, padded to the longest text."""
        return self.call(tokenizer.OP, texts, timeout=timeout, priority=priority)

    def text_encoder(
        self, input_ids: Any, attention_mask: Any, *, timeout: float | None = None, priority: int | None = None
    ) -> Embedding:
        """input_ids, attention_mask (B, T) int64 -> Embedding (B, 384), L2-normalised."""
        return self.call(text_encoder.OP, input_ids, attention_mask, timeout=timeout, priority=priority)

    def search(self, texts: Any, *, timeout: float | None = None, priority: int | None = None) -> TopK:
        """Ensemble: texts (a str or a list of B) -> TopK of the catalog for each text."""
        return self.call(search.OP, texts, timeout=timeout, priority=priority)

    # -- plumbing -----------------------------------------------------------------------------
    def call(self, model: str | Op, *inputs: Any, timeout: float | None = None, priority: int | None = None) -> Answer:
        """Check, send with retries and failover, decode. `inputs` in the order of the model's spec."""
        op, arrays = self._prepare(model, inputs)
        return self._send(op, arrays, timeout, priority=self._priority(priority))

    def infer(
        self, model: str | Op, *inputs: Any, timeout: float | None = None, priority: int | None = None
    ) -> dict[str, np.ndarray]:
        """Like `call`, but the raw output tensors by name."""
        op, arrays = self._prepare(model, inputs)
        return self._send(op, arrays, timeout, raw=True, priority=self._priority(priority))

    def _attempt(
        self, ep: Endpoint, op: Op, arrays: dict[str, np.ndarray], timeout: float, priority: int = 0
    ) -> dict[str, np.ndarray]:
        return ep.transport.infer(op.name, arrays, op.output_names, timeout, priority)

    def _probe(self, ep: Endpoint, op: Op, timeout: float) -> None:
        ep.renew().close()
        if not ep.transport.ready(op.name, timeout):
            raise _unavailable_probe(ep, op.name)

    def _send(
        self, op: Op, arrays: dict[str, np.ndarray], timeout: float | None, raw: bool = False, priority: int = 0
    ) -> Any:
        attempts = self._attempts(op, timeout)
        for step in attempts.plan():
            if isinstance(step, float):
                time.sleep(step)
                continue
            ep, limit, probe = step
            try:
                if probe:
                    self._probe(ep, op, limit)
                outputs = op.answered(arrays, self._attempt(ep, op, arrays, limit, priority))
            except RejectedError:
                ep.breaker.success()  # the server answered: its queue policy refused this request
                raise
            except RETRYABLE as exc:
                attempts.failed(ep, exc)
                continue
            except ClientError:
                ep.breaker.success()  # the endpoint answered: the request itself is the problem
                raise
            answer = attempts.answer(ep)
            return outputs if raw else op.decode(outputs, **answer)
        raise attempts.error()

    def health(self, timeout: float = 1.0) -> dict[str, bool]:
        """Server readiness per endpoint; updates the circuit breakers."""
        out = {}
        for ep in self.endpoints:
            ok = ep.transport.ready(None, timeout)
            ep.breaker.success() if ok else ep.breaker.failure()
            out[ep.url] = ok
        return out

    def limits(self, model: str | Op, timeout: float | None = None) -> tuple[int, list[int]]:
        """(max_batch_size, preferred batch sizes) from the served config; the spec's max if no endpoint answers."""
        op = op_for(model)
        if op.name not in self._limits:
            for ep in self.endpoints:
                try:
                    self._limits[op.name] = model_limits(ep.transport.config(op.name, timeout or self.timeout))
                    break
                except ClientError as exc:
                    log.warning("%s: cannot read the model config at %s: %s", op.name, ep.url, exc)
            else:
                return op.spec.max_batch_size, []
        return self._limits[op.name]

    def map(
        self,
        model: str | Op,
        *inputs: Any,
        batch_size: int | str | None = None,
        timeout: float | None = None,
        priority: int | None = Priority.BACKGROUND,
    ) -> Answer:
        """One large batch split into requests of the model's batch size (largest preferred size by default,
        'max' for max_batch_size, or an int), sent `concurrency` at a time, results joined in input order.
        `timeout` is the deadline of each request; a bulk job goes in the background lane unless told otherwise."""
        op = op_for(model)
        arrays = self._whole(op, inputs)
        chunks = self._cut(arrays, self._batch_size(op, batch_size, lambda: self.limits(op)))
        start = time.monotonic()
        p = self._priority(priority)
        if len(chunks) == 1:
            return self._send(op, chunks[0], timeout, priority=p)
        parts = list(self._executor().map(lambda a: self._send(op, a, timeout, priority=p), chunks))
        return concat(parts, time.monotonic() - start)

    def forecast_assets(self, windows: Any, *, model: str = "nhits", **options: Any) -> Forecast:
        """Forecast many assets at once (e.g. 1,000 x 168 windows) with `map`."""
        return self.map(model, windows, **options)

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="clients")
            return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for ep in self.endpoints:
            ep.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------- asyncio


class AsyncClient(_Base):
    """asyncio client with the same methods and arguments as `Client` (await them). Use from one event loop."""

    _asynchronous = True

    async def nhits(self, window: Any, *, timeout: float | None = None, priority: int | None = None) -> Forecast:
        """window (B, 168) float32 -> Forecast (B, 24)."""
        return await self.call(nhits.OP, window, timeout=timeout, priority=priority)

    async def reservoir(self, window: Any, *, timeout: float | None = None, priority: int | None = None) -> Forecast:
        """window (B, 168) float32 -> Forecast (B, 24)."""
        return await self.call(reservoir.OP, window, timeout=timeout, priority=priority)

    async def forecast_blend(
        self, nhits_forecast: Any, reservoir_forecast: Any, *, timeout: float | None = None, priority: int | None = None
    ) -> Forecast:
        """two (B, 24) float32 forecasts -> their blend, Forecast (B, 24)."""
        return await self.call(
            forecast_blend.OP, nhits_forecast, reservoir_forecast, timeout=timeout, priority=priority
        )

    async def similarity(self, query: Any, *, timeout: float | None = None, priority: int | None = None) -> TopK:
        """query (B, 384) float32 -> TopK ids (B, 10) int64, scores (B, 10) float32."""
        return await self.call(similarity.OP, query, timeout=timeout, priority=priority)

    async def user_embedding(
        self, user_ids: Any, *, timeout: float | None = None, priority: int | None = None
    ) -> Embedding:
        """user ids (B,) or (B, 1) int64 -> Embedding (B, 384)."""
        return await self.call(user_embedding.OP, user_ids, timeout=timeout, priority=priority)

    async def forecast(
        self, window: Any, *, timeout: float | None = None, priority: int | None = None
    ) -> EnsembleForecast:
        """Ensemble: window (B, 168) -> blended forecast (B, 24) plus the nhits and reservoir forecasts."""
        return await self.call(forecast.OP, window, timeout=timeout, priority=priority)

    async def recommend(self, user_ids: Any, *, timeout: float | None = None, priority: int | None = None) -> TopK:
        """Ensemble: user ids (B,) or (B, 1) int64 -> TopK of the catalog for each user."""
        return await self.call(recommend.OP, user_ids, timeout=timeout, priority=priority)

    async def tokenizer(self, texts: Any, *, timeout: float | None = None, priority: int | None = None) -> Tokens:
        """texts -> Tokens ids, mask (B, T) int64."""
        return await self.call(tokenizer.OP, texts, timeout=timeout, priority=priority)

    async def text_encoder(
        self, input_ids: Any, attention_mask: Any, *, timeout: float | None = None, priority: int | None = None
    ) -> Embedding:
        """input_ids, attention_mask (B, T) int64 -> Embedding (B, 384)."""
        return await self.call(text_encoder.OP, input_ids, attention_mask, timeout=timeout, priority=priority)

    async def search(self, texts: Any, *, timeout: float | None = None, priority: int | None = None) -> TopK:
        """Ensemble: texts -> TopK of the catalog for each text."""
        return await self.call(search.OP, texts, timeout=timeout, priority=priority)

    async def call(
        self, model: str | Op, *inputs: Any, timeout: float | None = None, priority: int | None = None
    ) -> Answer:
        op, arrays = self._prepare(model, inputs)
        return await self._send(op, arrays, timeout, priority=self._priority(priority))

    async def infer(
        self, model: str | Op, *inputs: Any, timeout: float | None = None, priority: int | None = None
    ) -> dict[str, np.ndarray]:
        op, arrays = self._prepare(model, inputs)
        return await self._send(op, arrays, timeout, raw=True, priority=self._priority(priority))

    async def _probe(self, ep: Endpoint, op: Op, timeout: float) -> None:
        await ep.renew().close()
        if not await ep.transport.ready(op.name, timeout):
            raise _unavailable_probe(ep, op.name)

    async def _send(
        self, op: Op, arrays: dict[str, np.ndarray], timeout: float | None, raw: bool = False, priority: int = 0
    ) -> Any:
        attempts = self._attempts(op, timeout)
        for step in attempts.plan():
            if isinstance(step, float):
                await asyncio.sleep(step)
                continue
            ep, limit, probe = step
            try:
                if probe:
                    await self._probe(ep, op, limit)
                got = await ep.transport.infer(op.name, arrays, op.output_names, limit, priority)
                outputs = op.answered(arrays, got)
            except RejectedError:
                ep.breaker.success()
                raise
            except RETRYABLE as exc:
                attempts.failed(ep, exc)
                continue
            except ClientError:
                ep.breaker.success()
                raise
            answer = attempts.answer(ep)
            return outputs if raw else op.decode(outputs, **answer)
        raise attempts.error()

    async def health(self, timeout: float = 1.0) -> dict[str, bool]:
        out = {}
        for ep in self.endpoints:
            ok = await ep.transport.ready(None, timeout)
            ep.breaker.success() if ok else ep.breaker.failure()
            out[ep.url] = ok
        return out

    async def limits(self, model: str | Op, timeout: float | None = None) -> tuple[int, list[int]]:
        op = op_for(model)
        if op.name not in self._limits:
            for ep in self.endpoints:
                try:
                    self._limits[op.name] = model_limits(await ep.transport.config(op.name, timeout or self.timeout))
                    break
                except ClientError as exc:
                    log.warning("%s: cannot read the model config at %s: %s", op.name, ep.url, exc)
            else:
                return op.spec.max_batch_size, []
        return self._limits[op.name]

    async def map(
        self,
        model: str | Op,
        *inputs: Any,
        batch_size: int | str | None = None,
        timeout: float | None = None,
        priority: int | None = Priority.BACKGROUND,
    ) -> Answer:
        op = op_for(model)
        arrays = self._whole(op, inputs)
        limits = None if isinstance(batch_size, int) else await self.limits(op)
        chunks = self._cut(arrays, self._batch_size(op, batch_size, lambda: limits))
        start = time.monotonic()
        p = self._priority(priority)
        if len(chunks) == 1:
            return await self._send(op, chunks[0], timeout, priority=p)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(a: dict[str, np.ndarray]) -> Answer:
            async with gate:
                return await self._send(op, a, timeout, priority=p)

        parts = await asyncio.gather(*(one(a) for a in chunks))
        return concat(list(parts), time.monotonic() - start)

    async def forecast_assets(self, windows: Any, *, model: str = "nhits", **options: Any) -> Forecast:
        return await self.map(model, windows, **options)

    async def close(self) -> None:
        for ep in self.endpoints:
            await ep.transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
