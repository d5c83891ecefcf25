"""The trading path measured with the project's own clients, where perf_analyzer cannot go.

- `lanes`: one critical client (clients.Client, Priority.CRITICAL, concurrency 1) alone, then while
  perf_analyzer floods the same model at concurrency 16 in the default lane; on a server of the `cpu_lanes`
  configs (priority lanes) and on the served configs (the same without lanes). perf_analyzer 2.51 cannot set a
  request's priority, so the critical side is Python; both servers see the same client.
- `stream_ticks`: one sequence's ticks through clients.stream.StreamClient, over a gRPC stream and over
  unary gRPC calls, back to back.

Each returns a JSON-ready dict that perf.run writes into the run directory (lanes.json, stream_client.json).
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import numpy as np

from perf import perf_analyzer

log = logging.getLogger(__name__)

WARMUP_REQUESTS = 50
RAMP_S = 2.0  # the flood's clients connect and the queue fills before the critical client measures


def summarize_ms(latencies_ms: list[float]) -> dict:
    lat = np.asarray(latencies_ms, np.float64)
    if lat.size == 0:
        return {"n": 0}
    return {
        "n": int(lat.size),
        "p50_ms": float(np.percentile(lat, 50)),
        "p90_ms": float(np.percentile(lat, 90)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
    }


def critical_loop(url: str, model: str, rows: np.ndarray, seconds: float, priority: int, deadline_s: float) -> dict:
    """Closed loop, one request at a time, for `seconds`: latency of every answered request; refusals by kind."""
    from clients import Client, ClientError

    latencies, refused = [], {}
    with Client(url, timeout=deadline_s, retries=0, priority=priority) as client:
        for i in range(WARMUP_REQUESTS):  # a refusal here is counted with the others, not fatal
            try:
                client.call(model, rows[i % len(rows)][None])
            except ClientError as exc:
                refused[f"warmup {type(exc).__name__}"] = refused.get(f"warmup {type(exc).__name__}", 0) + 1
        end, i = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                client.call(model, rows[i % len(rows)][None])
                latencies.append((time.perf_counter() - t0) * 1e3)
            except ClientError as exc:
                refused[type(exc).__name__] = refused.get(type(exc).__name__, 0) + 1
            i += 1
    return {**summarize_ms(latencies), "refused": refused, "sent": i}


def _flood(point: perf_analyzer.Point, url: str, out: Path) -> subprocess.Popen:
    cmd = [*perf_analyzer.binary(), *perf_analyzer.command(point, url, out / f"{point.stem}.csv")]
    log_file = (out / f"{point.stem}.log").open("w")
    return subprocess.Popen(cmd, env=perf_analyzer.environment(), stdout=log_file, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def lanes(
    servers: dict,
    model: str,
    rows: np.ndarray,
    input_file: Path,
    out: Path,
    seconds: float = 10.0,
    flood_concurrency: int = 16,
    priority: int = 1,
    deadline_s: float = 0.05,
) -> dict:
    """servers: {"lanes": server, "no_lanes": server}. Per server: the critical client alone, then under the
    flood (its throughput and average batch from Triton's statistics over the same seconds)."""
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "model": model,
        "critical": {
            "priority": priority,
            "deadline_ms": deadline_s * 1e3,
            "concurrency": 1,
            "client": "clients.Client",
        },
        "flood": {
            "concurrency": flood_concurrency,
            "priority": "none (the model's default lane)",
            "by": "perf_analyzer",
        },
        "seconds": seconds,
    }
    for name, server in servers.items():
        alone = critical_loop(server.grpc_url, model, rows, seconds, priority, deadline_s)
        # one long measurement window: perf_analyzer only has to keep 16 requests in flight until stopped
        long = perf_analyzer.Measurement(interval_ms=int(1000 * (seconds + RAMP_S) * 4), stability=1000, max_trials=1)
        point = perf_analyzer.Point(
            model=model,
            label=f"{model}.lanes-flood-{name}",
            concurrency=flood_concurrency,
            input_data=str(input_file),
            measurement=long,
        )
        proc = _flood(point, server.grpc_url, out)
        try:
            time.sleep(RAMP_S)
            before = perf_analyzer.model_stats(server.http_url, model)
            t0 = time.monotonic()
            flooded = critical_loop(server.grpc_url, model, rows, seconds, priority, deadline_s)
            stats = perf_analyzer.stats_delta(before, perf_analyzer.model_stats(server.http_url, model))
            wall = time.monotonic() - t0
        finally:
            _stop(proc)
        flooded["flood_throughput"] = (stats["inference_count"] - flooded["n"]) / wall
        flooded["avg_batch"] = stats["avg_batch"]
        ratio = flooded.get("p99_ms", 0) / alone["p99_ms"] if alone.get("p99_ms") else None
        result[name] = {"alone": alone, "flooded": flooded, "p99_ratio": ratio}
        log.info(
            "%s %s: critical p99 alone %.2f ms, under a c%d flood %.2f ms (%.1fx; flood %.0f/s, refused %s)",
            model,
            name,
            alone.get("p99_ms", float("nan")),
            flood_concurrency,
            flooded.get("p99_ms", float("nan")),
            ratio or float("nan"),
            flooded["flood_throughput"],
            flooded["refused"] or "none",
        )
    return result


def stream_ticks(url: str, series: np.ndarray, ticks: int = 2000) -> dict:
    """One sequence's ticks through StreamClient, streamed and unary, alternating blocks of one sequence each
    (168 ticks, START to END), so both see the same machine."""
    from clients.stream import replay

    length = min(len(series), 168)
    lat: dict[str, list[float]] = {"stream": [], "unary": []}
    replay(url, series[:length], streaming=True)  # warm-up: connection, the model's first executions
    replay(url, series[:length], streaming=False)
    while min(len(v) for v in lat.values()) < ticks:
        for mode, streaming in (("stream", True), ("unary", False)):
            _, ms = replay(url, series[:length], streaming=streaming)
            lat[mode] += ms.tolist()
    out = {mode: summarize_ms(v) for mode, v in lat.items()}
    out["client"] = "clients.stream.StreamClient over gRPC, one sequence at a time"
    return out
