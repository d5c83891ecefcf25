"""Load that checks every answer: closed loop (to find the maximum) and paced open loop (the soak).

Each worker thread owns a gRPC and an HTTP client, picks a target by weight, sends one request from the
`Workload` pool and compares the response with its precomputed ONNX Runtime answer. A reservoir_stream
pick sends the next tick of the worker's own open sequence (START on the first, END on the last) under a
fresh correlation id per sequence. Every request ends as exactly one `Record`: ok, wrong (an answer that
differs from the reference: the one outcome that must never happen) or error (an explicit error).

Paced mode sends request k of worker i at t0 + (k * workers + i) / rate; a worker that falls behind sends
at once, so the latency of a late request is measured from its send, and the lag is recorded as well.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

try:
    from clients.errors import ClientError
except ImportError:  # the production clients are optional here
    ClientError = InferenceServerException

from models import spec
from reliability.reference import STREAM, Case, Workload, check, max_rel_err

log = logging.getLogger(__name__)

MODULES = {"grpc": grpcclient, "http": httpclient}
OK, WRONG, ERROR = "ok", "wrong", "error"
ERROR_PAUSE_S = 0.05


@dataclass
class Record:
    t: float  # send time, seconds since the run started
    latency: float  # seconds
    target: str
    protocol: str
    outcome: str  # ok | wrong | error
    detail: str = ""
    lag: float = 0.0  # seconds behind the schedule (paced mode)
    retries: int = 0
    rel_err: float = 0.0  # largest relative error of a float output against the reference
    matched: int = 0  # which right answer it was: 0 the case's `expected`, i > 0 its `also[i - 1]`


@dataclass
class Endpoint:
    """Where to send. `production`: through `clients.Client` (deadline, retries with backoff, failover to the
    `failover` servers in order, a circuit breaker per server) instead of bare tritonclient calls."""

    grpc_url: str
    http_url: str
    timeout_s: float = 30.0
    failover: tuple[tuple[str, str], ...] = ()  # more (grpc_url, http_url) pairs
    production: bool = False
    retries: int = 2


def _inputs(mod, arrays: dict[str, np.ndarray]) -> list:
    out = []
    for name, a in arrays.items():
        t = mod.InferInput(name, list(a.shape), np_to_triton_dtype(a.dtype))
        t.set_data_from_numpy(a)
        out.append(t)
    return out


def output_names(target: str) -> list[str]:
    return [t.name for t in spec.MODELS[target].outputs]


class Caller:
    """One thread's clients; `call` returns the outputs or raises InferenceServerException / OSError."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.grpc = grpcclient.InferenceServerClient(endpoint.grpc_url)
        self.http = httpclient.InferenceServerClient(
            endpoint.http_url, connection_timeout=endpoint.timeout_s, network_timeout=endpoint.timeout_s
        )
        self.production = {}
        if endpoint.production:
            from clients import Client

            pairs = [(endpoint.grpc_url, endpoint.http_url), *endpoint.failover]
            options = {"timeout": endpoint.timeout_s, "retries": endpoint.retries}
            self.production = {
                "grpc": Client([f"grpc://{g}" for g, _ in pairs], protocol="grpc", **options),
                "http": Client([f"http://{h}" for _, h in pairs], protocol="http", **options),
            }

    def call(self, protocol: str, target: str, arrays: dict[str, np.ndarray], **seq) -> dict[str, np.ndarray]:
        if self.production and not seq:
            client = self.production[protocol]
            got = client.infer(target, *[arrays[t.name] for t in spec.MODELS[target].inputs])
            return {n: got.get(n) for n in output_names(target)}
        mod = MODULES[protocol]
        outs = [mod.InferRequestedOutput(n) for n in output_names(target)]
        if protocol == "grpc":
            r = self.grpc.infer(
                target, _inputs(mod, arrays), outputs=outs, client_timeout=self.endpoint.timeout_s, **seq
            )
        else:
            r = self.http.infer(target, _inputs(mod, arrays), outputs=outs, **seq)
        return {n: r.as_numpy(n) for n in output_names(target)}

    def close(self) -> None:
        for c in (self.grpc, self.http, *self.production.values()):
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing a client of a dead server
                pass


@dataclass
class Mix:
    """Which targets, how often, over which protocol."""

    weights: dict[str, float]
    http_share: float = 0.25

    @classmethod
    def uniform(cls, workload: Workload, http_share: float = 0.25) -> Mix:
        return cls({t: 1.0 for t in workload.targets}, http_share)


_corrids = itertools.count(random.SystemRandom().randrange(1 << 40, 1 << 50))
_corrid_lock = threading.Lock()


def next_corrid() -> int:
    with _corrid_lock:
        return next(_corrids)


class Worker:
    def __init__(
        self, index: int, workload: Workload, mix: Mix, endpoint: Endpoint, seed: int = 0, retry_s: float = 0.0
    ):
        self.index = index
        self.retry_s = retry_s
        self.workload = workload
        self.mix = mix
        self.rng = random.Random(seed * 1000 + index)
        self.caller = Caller(endpoint)
        self.targets = list(mix.weights)
        self.cum = list(itertools.accumulate(mix.weights[t] for t in self.targets))
        self.seq: tuple[int, int, int, str] | None = None  # (sequence index, next tick, corrid, protocol)

    def one(self, t0: float, lag: float = 0.0, target: str | None = None) -> Record:
        target = target or self.rng.choices(self.targets, cum_weights=self.cum)[0]
        protocol = "http" if self.rng.random() < self.mix.http_share else "grpc"
        seq_args: dict = {}
        if target == STREAM:
            if self.seq is None:
                self.seq = (self.rng.randrange(len(self.workload.sequences)), 0, next_corrid(), protocol)
            s_idx, k, corrid, protocol = self.seq
            seq = self.workload.sequences[s_idx]
            last = k == len(seq.ticks) - 1
            seq_args = {"sequence_id": corrid, "sequence_start": k == 0, "sequence_end": last}
            case = Case(STREAM, {"tick": seq.ticks[k]}, {"forecast": seq.expected[k]})
            self.seq = None if last else (s_idx, k + 1, corrid, protocol)
        else:
            case = self.rng.choice(self.workload.cases[target])
        start = time.monotonic()
        retries = 0
        while True:
            try:
                got = self.caller.call(protocol, target, case.inputs, **seq_args)
                break
            except (InferenceServerException, ClientError, OSError, ValueError) as exc:
                message = _message(exc)
                if target != STREAM and retryable(message) and time.monotonic() - start < self.retry_s:
                    retries += 1
                    time.sleep(min(0.05 * 2**retries, 0.5))
                    continue
                if target == STREAM:
                    self.seq = None  # a failed tick leaves the sequence's state unknown: start a new one
                return Record(start - t0, time.monotonic() - start, target, protocol, ERROR, message, lag, retries)
        latency = time.monotonic() - start
        matched, want = 0, case.expected
        problem = check(target, got, want)
        for i, other in enumerate(case.also, start=1):
            if problem and check(target, got, other) is None:
                matched, want, problem = i, other, None
        err = max_rel_err(got, want)
        outcome = WRONG if problem else OK
        return Record(start - t0, latency, target, protocol, outcome, problem or "", lag, retries, err, matched)


# Failures that mean the request never reached a model, so sending it again cannot double anything.
RETRYABLE = (
    "unavailable",
    "connection refused",
    "failed to connect",
    "connection reset",
    "socket closed",
    "broken pipe",
    "remotedisconnected",
    "connection aborted",
    "not ready",
    "is not found",
    "unknown model",
)


def retryable(message: str) -> bool:
    m = message.lower()
    return any(k in m for k in RETRYABLE)


def _message(exc: BaseException) -> str:
    text = exc.message() if isinstance(exc, InferenceServerException) and callable(exc.message) else str(exc)
    status = exc.status() if isinstance(exc, InferenceServerException) and callable(exc.status) else None
    text = " ".join(str(text).split())
    return f"[{status}] {text}" if status else f"{type(exc).__name__}: {text}"


@dataclass
class Run:
    records: list[Record] = field(default_factory=list)
    unsent: int = 0  # paced mode: requests of the schedule not sent by the end (the server could not keep up)
    started: float = 0.0
    seconds: float = 0.0

    @property
    def throughput(self) -> float:
        return len(self.records) / self.seconds if self.seconds else 0.0

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.records if r.outcome == outcome)


def run_load(
    workload: Workload,
    endpoint: Endpoint,
    seconds: float,
    workers: int,
    rate: float | None = None,
    mix: Mix | None = None,
    seed: int = 0,
    on_tick: Callable[[float], None] | None = None,
    stop: threading.Event | None = None,
    t0: float | None = None,
    retry_s: float = 0.0,
) -> Run:
    """Closed loop with `workers` threads (rate None) or paced at `rate` requests/s across them.

    `t0`: the time.monotonic() that record times count from (default now); `retry_s`: retry a request
    that failed because the server was unreachable for up to this long (never a stream tick).
    """
    mix = mix or Mix.uniform(workload)
    stop = stop or threading.Event()
    pool = [Worker(i, workload, mix, endpoint, seed, retry_s) for i in range(workers)]
    run = Run()
    lock = threading.Lock()
    t0 = time.monotonic() if t0 is None else t0
    end = time.monotonic() + seconds

    def loop(w: Worker) -> None:
        local: list[Record] = []
        k = 0
        while not stop.is_set():
            lag = 0.0
            if rate:
                due = t0 + (k * workers + w.index) / rate
                now = time.monotonic()
                if due >= end or now >= end:  # the run ends on time, even behind its schedule
                    with lock:
                        run.unsent += max(0, int((end - t0) * rate / workers) - k)
                    break
                if due > now:
                    if stop.wait(due - now):
                        break
                else:
                    lag = now - due
                k += 1
            elif time.monotonic() >= end:
                break
            local.append(w.one(t0, lag))
            if not rate and local[-1].outcome == ERROR:
                stop.wait(ERROR_PAUSE_S)  # a caller that got an error does not resend in a busy loop
        while w.seq is not None:  # end the open sequence, so the server holds no state for it
            local.append(w.one(t0, target=STREAM))
        with lock:
            run.records.extend(local)

    threads = [threading.Thread(target=loop, args=(w,), daemon=True, name=f"load-{w.index}") for w in pool]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            if on_tick is not None:
                on_tick(time.monotonic() - t0)
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
        for w in pool:
            w.caller.close()
    run.started, run.seconds = t0, time.monotonic() - t0
    run.records.sort(key=lambda r: r.t)
    return run


def measure_max(
    workload: Workload, endpoint: Endpoint, seconds: float = 6.0, levels: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
) -> tuple[float, int, list[dict]]:
    """Closed-loop throughput at growing concurrency until it stops rising by 5 %: (max/s, workers, steps)."""
    best, best_workers, steps = 0.0, levels[0], []
    for workers in levels:
        run = run_load(workload, endpoint, seconds, workers)
        lat = np.array([r.latency for r in run.records]) if run.records else np.zeros(1)
        step = {
            "workers": workers,
            "throughput": round(run.throughput, 1),
            "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 2),
            "errors": run.count(ERROR),
            "wrong": run.count(WRONG),
        }
        steps.append(step)
        log.info("closed loop, %d workers: %.1f requests/s, p99 %.1f ms", workers, run.throughput, step["p99_ms"])
        if run.throughput > best * 1.05:
            best, best_workers = run.throughput, workers
        else:
            break
    return best, best_workers, steps


LAG_LIMIT_S = 1.0  # a paced rate is sustained when the 99th percentile of the schedule's lag stays under this
LAG_GROWTH_S = 0.1  # ... and its mean over the last third is at most this much above the first third's


def lag_bounded(run: Run, seconds: float) -> tuple[bool, dict]:
    """Did the paced schedule keep up? The lag of the last third of the run not growing (a rate past capacity
    builds lag linearly: excess / rate x t), its 99th percentile under LAG_LIMIT_S (the maximum is a tail that
    grows with the run's length, not with the load: a 600 s run at a sustained rate sees single 1 s stalls), and
    no more requests left unsent at the end than a lag within the limit leaves (those due in its last second)."""

    def part(lo: float, hi: float) -> list[float]:
        return [r.lag for r in run.records if lo * seconds <= r.t < hi * seconds]

    first, last = part(0, 1 / 3), part(2 / 3, 1.01)
    mean_first = float(np.mean(first)) if first else 0.0
    mean_last = float(np.mean(last)) if last else 0.0
    max_last = max(last, default=0.0)
    p99_last = float(np.percentile(last, 99)) if last else 0.0
    backlog = max(1, int(LAG_LIMIT_S * run.throughput))
    ok = run.unsent <= backlog and p99_last <= LAG_LIMIT_S and mean_last <= mean_first + LAG_GROWTH_S
    return ok, {
        "p99_lag_last_third_ms": round(p99_last * 1e3, 1),
        "max_lag_last_third_ms": round(max_last * 1e3, 1),
        "mean_lag_first_third_ms": round(mean_first * 1e3, 1),
        "mean_lag_last_third_ms": round(mean_last * 1e3, 1),
        "unsent": run.unsent,
    }


def sustained_rate(
    workload: Workload,
    endpoint: Endpoint,
    maximum: float,
    workers: int,
    mix: Mix | None = None,
    seconds: float = 10.0,
    steps: int = 5,
    ceiling: float = 1.0,
) -> tuple[float, list[dict]]:
    """The highest paced rate (a fraction of the closed-loop `maximum`, bisected over (0, ceiling] in `steps`
    probes of `seconds`) whose schedule lag stays bounded: what the server sustains here, measured now, so it
    follows the server (a faster search path, another machine) instead of a number written down once."""
    lo, hi = 0.0, ceiling
    probes = []
    for _ in range(steps):
        fraction = (lo + hi) / 2
        run = run_load(workload, endpoint, seconds, workers, rate=fraction * maximum, mix=mix)
        ok, lag = lag_bounded(run, seconds)
        probes.append(
            {
                "fraction": round(fraction, 4),
                "rate": round(fraction * maximum, 1),
                "achieved": round(run.throughput, 1),
                "sustained": ok,
                "errors": run.count(ERROR),
                "wrong": run.count(WRONG),
                **lag,
            }
        )
        log.info("paced at %.0f %% of the maximum (%.0f/s): lag %s -> %s", 100 * fraction, fraction * maximum, lag, ok)
        if ok:
            lo = fraction
        else:
            hi = fraction
    if lo == 0.0:  # not even the smallest probe kept up: hold that one and let the soak report the lag
        lo = probes[-1]["fraction"]
    return lo, probes


def summarize(records: list[Record]) -> dict:
    """Counts, latency percentiles (ms) and errors of a list of records."""
    lat = np.array([r.latency for r in records if r.outcome == OK]) * 1e3
    pct = {f"p{q}": round(float(np.percentile(lat, q)), 2) for q in (50, 95, 99)} if lat.size else {}
    errors: dict[str, int] = {}
    for r in records:
        if r.outcome == ERROR:
            errors[r.detail[:200]] = errors.get(r.detail[:200], 0) + 1
    return {
        "requests": len(records),
        "ok": sum(r.outcome == OK for r in records),
        "wrong": sum(r.outcome == WRONG for r in records),
        "errors": sum(r.outcome == ERROR for r in records),
        "latency_ms": {**pct, "max": round(float(lat.max()), 2) if lat.size else None},
        "max_rel_err": float(f"{max((r.rel_err for r in records if r.outcome != ERROR), default=0.0):.3g}"),
        "error_messages": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:10]),
        "wrong_examples": [f"t={r.t:.1f} s {r.protocol}: {r.detail}" for r in records if r.outcome == WRONG][:10],
    }


def timeline(records: list[Record], window_s: float) -> list[dict]:
    """Per window of send time: requests, rate, p50 / p99 (ms), errors, wrong, worst schedule lag (ms)."""
    out = []
    if not records:
        return out
    last = max(r.t for r in records)
    n_windows = max(1, round(last / window_s))  # a last partial window under half a window joins the one before
    for i in range(n_windows):
        final = i == n_windows - 1
        rs = [r for r in records if i * window_s <= r.t and (final or r.t < (i + 1) * window_s)]
        lat = np.array([r.latency for r in rs if r.outcome == OK]) * 1e3
        span = max(last - i * window_s, 1e-9) if final else window_s
        out.append(
            {
                "t_s": round(i * window_s, 1),
                "requests": len(rs),
                "rate": round(len(rs) / span, 1) if span > 0 else None,
                "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
                "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
                "errors": sum(r.outcome == ERROR for r in rs),
                "wrong": sum(r.outcome == WRONG for r in rs),
                "max_lag_ms": round(max((r.lag for r in rs), default=0.0) * 1e3, 1),
            }
        )
    return out
