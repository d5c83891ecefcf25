"""Streaming client for the stateful reservoir: one tick per request, the state stays on the server.

    python -m clients.stream --url 127.0.0.1:8001 --artifacts artifacts --series 0 --ticks 200
    python -m clients.stream --url 127.0.0.1:8000 --protocol http --series-file prices.npy
    python -m clients.stream --url 127.0.0.1:8001 --artifacts artifacts --sequences 300 --ticks 50

Triton's sequence batcher routes every request by its sequence (correlation) id. The first request
of a sequence carries sequence_start (the server resets that sequence's reservoir state to zeros),
the last carries sequence_end (the server frees the state); a sequence quiet for longer than the
model's max_sequence_idle_microseconds is released. Triton itself refuses a tick for a sequence it
does not know (never started, ended or idle) with "must specify the START flag".

Closing: Triton has no request that ends a sequence without data, so END rides on a tick. Send the
last tick with `send(tick, end=True)` (`replay` does), or call `close()`: if the sequence is still
open it sends the previous tick again with sequence_end, discards that forecast and lets the server
free the state. That costs one extra model step whose result nobody sees, and never changes a
forecast the caller received.

Transport: over gRPC, StreamClient sends its ticks on one bidirectional stream (`start_stream` /
`async_stream_infer`), which costs less per tick than a unary call (README "Streaming" has the figures);
`streaming=False` makes unary calls, HTTP always does.

Exactly once: a tick is applied by the server at most once and never resent by the client. When a
tick's answer is lost (no answer within `timeout`, a broken connection), the server may or may not have
moved the state, so `send` raises `TickLostError` and refuses further ticks of that sequence. `resume()`
starts a new sequence that replays the last `history` ticks sent (168 by default, the lost one included)
from START: its forecasts are then the windowed reservoir's on those ticks. Sequence ids are random
63-bit numbers unless given, so two client processes never share a sequence by accident.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import csv
import logging
import queue
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients.errors import (
    ClientError,
    DeadlineExceededError,
    InferenceServerError,
    InvalidInputError,
    ServerUnavailableError,
    from_exception,
)
from models import spec

log = logging.getLogger("clients.stream")

MODEL = spec.STREAM.name
TICK = spec.STREAM.inputs[0].name  # "tick", FP32 [batch, 1]
FORECAST = spec.STREAM.outputs[0].name  # "forecast", FP32 [batch, HORIZON]
PROTOCOLS = ("grpc", "http")
DEFAULT_TIMEOUT_S = 30.0
UNKNOWN_SEQUENCE = "must specify the START flag"  # Triton's answer to a tick of a sequence it does not hold
MAX_SEQUENCE_ID = 2**63  # random ids are drawn below it (Triton's correlation ids are uint64)
# A lost answer: the request may have reached the server and moved the state. Any other error is one
# the server answered (bad input, unknown sequence, model error), and Triton moves a state only on success.
UNKNOWN_OUTCOME = (DeadlineExceededError, ServerUnavailableError)


class StreamError(ClientError, RuntimeError):
    """A streaming call out of order: send() with no open sequence, open() while one is open.

    Errors from the server or the transport are the `clients.errors` classes: a tick for a sequence
    Triton does not know (never started, ended, idle) is an InvalidInputError naming the sequence.
    """


class TickLostError(StreamError):
    """A tick was sent but its answer was lost (deadline, broken connection): the server may or may not
    have applied it, so the sequence's state is unknown. It is not resent; the sequence takes no more
    ticks until `resume()` (a new sequence replaying the last ticks from START) or `open()`."""


def new_sequence_id() -> int:
    """A random sequence id in [1, 2**63)."""
    return secrets.randbelow(MAX_SEQUENCE_ID - 1) + 1


def _modules(protocol: str, aio: bool = False):
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {PROTOCOLS}")
    if protocol == "grpc":
        if aio:
            import tritonclient.grpc.aio as mod
        else:
            import tritonclient.grpc as mod
    elif aio:
        import tritonclient.http.aio as mod
    else:
        import tritonclient.http as mod
    return mod


def _tick_input(mod, tick: float):
    value = np.array([[tick]], dtype=np.float32)  # (1, 1): one request is one tick of one sequence
    if not np.isfinite(value).all():
        raise InvalidInputError(f"tick {tick!r} is not a finite number")
    tensor = mod.InferInput(TICK, [1, 1], "FP32")
    tensor.set_data_from_numpy(value)
    return tensor


def _check_sequence_id(sequence_id: int) -> int:
    sequence_id = int(sequence_id)
    if not 1 <= sequence_id < 2**64:
        raise InvalidInputError(f"sequence id {sequence_id} must be in [1, 2**64): Triton reserves 0 for 'no sequence'")
    return sequence_id


def _forecast(result, tick: float) -> np.ndarray:
    out = result.as_numpy(FORECAST)
    if out is None or out.shape != (1, spec.HORIZON):
        raise InferenceServerError(
            f"response has no '{FORECAST}' of shape [1, {spec.HORIZON}] (got {getattr(out, 'shape', None)})"
        )
    if np.isnan(out).all():  # the in-graph sentinel (models/guard.py): the server kept the sequence's state
        raise InvalidInputError(f"the server answered the invalid-input sentinel (NaN) for tick {tick!r}")
    return out[0]


class StreamClient:
    """One open sequence at a time over one connection (gRPC stream, gRPC unary or HTTP).

    with StreamClient("127.0.0.1:8001") as client:
        client.open()                         # a random 63-bit sequence id (or open(42))
        for tick in ticks[:-1]:
            forecast = client.send(tick)      # (HORIZON,) float32
        forecast = client.send(ticks[-1], end=True)
    """

    def __init__(
        self,
        url: str,
        model: str = MODEL,
        protocol: str = "grpc",
        timeout: float = DEFAULT_TIMEOUT_S,
        streaming: bool | None = None,
        history: int = spec.INPUT_SIZE,
    ) -> None:
        self.model, self.protocol, self.timeout = model, protocol, float(timeout)
        self.streaming = protocol == "grpc" if streaming is None else bool(streaming)
        if self.streaming and protocol != "grpc":
            raise ValueError("streaming=True needs protocol='grpc' (HTTP has no bidirectional stream)")
        if history < 1:
            raise ValueError(f"history must be at least 1 tick, got {history}")
        self._mod = _modules(protocol)
        if protocol == "grpc":
            self._client = self._mod.InferenceServerClient(url)
        else:
            self._client = self._mod.InferenceServerClient(
                url, connection_timeout=self.timeout, network_timeout=self.timeout
            )
        self.sequence_id: int | None = None
        self._sent = 0  # ticks the server answered in the open sequence
        self._last_tick: float | None = None  # the last tick sent (or tried) in the open sequence
        self._history: collections.deque[float] = collections.deque(maxlen=history)  # ticks applied or lost
        self._lost: str | None = None  # why the open sequence's state is unknown
        self._answers: queue.Queue | None = None  # the gRPC stream's responses, while it is open
        self._request = 0

    @property
    def is_open(self) -> bool:
        return self.sequence_id is not None

    @property
    def lost(self) -> bool:
        """True after a TickLostError, until resume() or open()."""
        return self._lost is not None

    def open(self, sequence_id: int | None = None) -> int:
        """Start a sequence (a random id unless given): the next `send` carries sequence_start and the server
        resets its state. Returns the sequence id."""
        if self.is_open and not self.lost:
            raise StreamError(f"sequence {self.sequence_id} is still open: close() it first")
        self.sequence_id = _check_sequence_id(new_sequence_id() if sequence_id is None else sequence_id)
        self._sent, self._last_tick, self._lost = 0, None, None
        self._history.clear()
        return self.sequence_id

    def reset(self) -> None:
        """Start the open sequence over: the next `send` carries sequence_start again (state back to zeros)."""
        if not self.is_open:
            raise StreamError("no open sequence: call open(sequence_id) first")
        self._sent, self._lost = 0, None
        self._history.clear()

    # -- transport ------------------------------------------------------------------------------
    def _where(self) -> str:
        return f"{self.model} sequence {self.sequence_id}"

    def _infer(self, tick: float, start: bool, end: bool):
        """The answer to one tick; ClientError as clients.errors maps it (UNKNOWN_OUTCOME: maybe applied)."""
        if self.streaming:
            return self._stream_infer(tick, start, end)
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        inputs = [_tick_input(self._mod, tick)]
        try:
            return self._client.infer(
                self.model,
                inputs,
                outputs=[self._mod.InferRequestedOutput(FORECAST)],
                sequence_id=self.sequence_id,
                sequence_start=start,
                sequence_end=end,
                **kwargs,
            )
        except Exception as exc:  # every transport error becomes a clients.errors class
            raise from_exception(exc, self._where(), self.timeout) from exc

    def _stream_infer(self, tick: float, start: bool, end: bool):
        if self._answers is None:
            answers: queue.Queue = queue.Queue()
            try:
                self._client.start_stream(callback=lambda result, error: answers.put((result, error)))
            except Exception as exc:
                raise from_exception(exc, f"{self._where()}: starting the gRPC stream", self.timeout) from exc
            self._answers = answers
        self._request += 1
        try:
            self._client.async_stream_infer(
                self.model,
                [_tick_input(self._mod, tick)],
                outputs=[self._mod.InferRequestedOutput(FORECAST)],
                request_id=str(self._request),
                sequence_id=self.sequence_id,
                sequence_start=start,
                sequence_end=end,
            )
        except Exception as exc:  # not sent: the stream was already broken
            self._stop_stream()
            raise ServerUnavailableError(f"{self._where()}: the gRPC stream is closed ({exc})") from exc
        try:
            result, error = self._answers.get(timeout=self.timeout)
        except queue.Empty:
            self._stop_stream()  # a late answer must never be read as the next tick's
            raise DeadlineExceededError(f"{self._where()}: no answer within {self.timeout:.3g} s") from None
        if error is None:
            return result
        if error.status() is not None:  # the stream itself failed (server gone, cancelled)
            self._stop_stream()
            mapped = from_exception(error, self._where(), self.timeout)
            raise (mapped if isinstance(mapped, UNKNOWN_OUTCOME) else ServerUnavailableError(str(mapped))) from error
        message = error.message() or str(error)  # the server refused this request (the stream lives on)
        kind = InvalidInputError if UNKNOWN_SEQUENCE in message else InferenceServerError
        raise kind(f"{self._where()}: {message}") from error

    def _stop_stream(self) -> None:
        if self._answers is not None:
            self._answers = None
            try:
                self._client.stop_stream(cancel_requests=True)
            except Exception as exc:  # already broken: nothing left to stop
                log.debug("stopping the gRPC stream: %s", exc)

    # -- ticks ----------------------------------------------------------------------------------
    def send(self, tick: float, end: bool = False) -> np.ndarray:
        """One tick -> the forecast (HORIZON,) after it; `end=True` makes it the sequence's last tick."""
        if not self.is_open:
            raise StreamError("no open sequence: call open(sequence_id) first")
        if self.lost:
            raise TickLostError(self._lost)
        tick = float(tick)
        if not np.isfinite(tick):  # refused here, before anything is sent: the sequence stays as it was
            raise InvalidInputError(f"tick {tick!r} is not a finite number")
        start = self._sent == 0
        self._last_tick = tick
        try:
            result = self._infer(tick, start, end)
        except UNKNOWN_OUTCOME as exc:
            self._history.append(tick)  # maybe applied: resume() replays it
            self._lost = (
                f"{self._where()}: tick {self._sent} ({tick!r}) was sent but its answer was lost ({exc}); the "
                "server may have applied it, so the sequence's state is unknown and the tick is not resent. "
                f"resume() starts a new sequence replaying the last {len(self._history)} tick(s) from START "
                "(its forecasts are then the windowed model's on them), or open() starts over"
            )
            raise TickLostError(self._lost) from exc
        except ClientError as exc:
            # The server answered with an error: Triton moves a sequence's state only on success. END
            # releases the sequence in Triton's scheduler whatever the model answered, and a sequence
            # Triton does not know (ended elsewhere, idle) has nothing left to close.
            if end or UNKNOWN_SEQUENCE in str(exc):
                self.sequence_id = None
            raise
        self._sent += 1
        self._history.append(tick)
        if end:
            self.sequence_id = None
        return _forecast(result, tick)

    def resume(self, sequence_id: int | None = None) -> np.ndarray:
        """After a TickLostError: a new sequence (random id unless given) that replays the last `history`
        ticks sent, the lost one included, from START. Returns the forecast after the last of them. The old
        sequence is left to the server's idle timeout."""
        if not self._history:
            raise StreamError("nothing to resume: no tick was sent in this sequence")
        ticks = list(self._history)
        self.sequence_id, self._lost = None, None
        self.open(sequence_id)
        forecast = None
        for tick in ticks:
            forecast = self.send(tick)
        return forecast

    def close(self) -> None:
        """End the open sequence so the server frees its state now (see the module docstring)."""
        if not self.is_open:
            return
        try:
            # END must ride on a request: the previous tick again, its forecast dropped. If even the
            # first send failed, Triton may or may not hold the sequence: START + END is valid either way.
            # A sequence whose state is unknown is left to the idle timeout: nothing more is sent to it.
            if self._last_tick is not None and not self.lost:
                self._infer(self._last_tick, start=self._sent == 0, end=True)
        finally:
            self.sequence_id, self._lost = None, None

    def shutdown(self) -> None:
        """close() and release the connection."""
        try:
            self.close()
        finally:
            self._stop_stream()
            self._client.close()

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.shutdown()
            return
        try:  # best effort: do not hide the error that is already on its way out
            self.shutdown()
        except Exception as close_exc:
            log.warning("closing sequence after an error failed too: %s", close_exc)


def replay(
    url: str,
    series: np.ndarray,
    sequence_id: int | None = None,
    protocol: str = "grpc",
    model: str = MODEL,
    timeout: float = DEFAULT_TIMEOUT_S,
    streaming: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Stream a series (T,) tick by tick as one sequence (START on the first, END on the last; a random id
    unless given). Returns forecasts (T, HORIZON) float32 and the round-trip latency of every tick in ms (T,).
    """
    series = np.asarray(series, dtype=np.float32).reshape(-1)
    if series.size == 0:
        raise InvalidInputError("the series is empty")
    forecasts = np.empty((series.size, spec.HORIZON), np.float32)
    latencies = np.empty(series.size, np.float64)
    with StreamClient(url, model, protocol, timeout, streaming=streaming) as client:
        client.open(sequence_id)
        for t, tick in enumerate(series):
            t0 = time.perf_counter()
            forecasts[t] = client.send(float(tick), end=t == series.size - 1)
            latencies[t] = (time.perf_counter() - t0) * 1e3
    return forecasts, latencies


# -- many sequences at once ----------------------------------------------------------------------


async def _replay_many_async(
    url: str, series: np.ndarray, first_id: int, protocol: str, model: str, timeout: float, end: bool
) -> tuple[np.ndarray, np.ndarray]:
    mod = _modules(protocol, aio=True)
    n, steps = series.shape
    forecasts = np.empty((n, steps, spec.HORIZON), np.float32)
    latencies = np.empty((n, steps), np.float64)
    if protocol == "grpc":
        client = mod.InferenceServerClient(url)
        kwargs = {"client_timeout": timeout}
    else:
        client = mod.InferenceServerClient(url, conn_limit=max(100, n), conn_timeout=timeout)
        kwargs = {}
    output = mod.InferRequestedOutput(FORECAST)

    async def one(row: int) -> None:
        sequence_id = first_id + row
        for t in range(steps):
            t0 = time.perf_counter()
            try:
                result = await client.infer(
                    model,
                    [_tick_input(mod, float(series[row, t]))],
                    outputs=[output],
                    sequence_id=sequence_id,
                    sequence_start=t == 0,
                    sequence_end=end and t == steps - 1,
                    **kwargs,
                )
            except Exception as exc:
                raise from_exception(exc, f"{model} sequence {sequence_id} tick {t}", timeout) from exc
            latencies[row, t] = (time.perf_counter() - t0) * 1e3
            forecasts[row, t] = _forecast(result, float(series[row, t]))

    try:
        async with asyncio.TaskGroup() as group:  # the first failure cancels the other sequences
            for row in range(n):
                group.create_task(one(row))
    except* ClientError as failed:
        raise failed.exceptions[0] from None
    finally:
        await client.close()
    return forecasts, latencies


def replay_many(
    url: str,
    series: np.ndarray,
    first_sequence_id: int | None = None,
    protocol: str = "grpc",
    model: str = MODEL,
    timeout: float = DEFAULT_TIMEOUT_S,
    end: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Stream S series (S, T) at once, series s as sequence first_sequence_id + s (a random first id unless
    given), over one asyncio client.

    Every sequence has at most one request in flight (its ticks stay in order); the S sequences run
    concurrently, so the server's sequence batcher can put ticks of different sequences into one
    execution. `end=False` leaves the sequences open (the server frees them when they go idle), as
    does a failure, which cancels the other sequences and raises the first error. Sequences beyond
    the config's max_candidate_sequences (1024) wait in Triton's backlog until others end.
    Returns forecasts (S, T, HORIZON) and per-tick latencies in ms (S, T).
    """
    series = np.asarray(series, dtype=np.float32)
    if series.ndim != 2 or series.size == 0:
        raise InvalidInputError(f"series must be a non-empty (sequences, ticks) array, got shape {series.shape}")
    if first_sequence_id is None:
        first_sequence_id = secrets.randbelow(MAX_SEQUENCE_ID - series.shape[0]) + 1
    _check_sequence_id(first_sequence_id)
    _check_sequence_id(first_sequence_id + series.shape[0] - 1)
    return asyncio.run(_replay_many_async(url, series, first_sequence_id, protocol, model, timeout, end))


# -- server statistics ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    inferences: int  # requests answered (one tick each)
    executions: int  # model executions: fewer than inferences when ticks of sequences were batched


def model_counts(url: str, protocol: str = "grpc", model: str = MODEL) -> Counts:
    """Cumulative success inference and execution counts of a model, from Triton's statistics API."""
    mod = _modules(protocol)
    client = mod.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(model, **({"as_json": True} if protocol == "grpc" else {}))
    except Exception as exc:
        raise from_exception(exc, f"{url} statistics of {model}") from exc
    finally:
        client.close()
    entry = next(m for m in stats["model_stats"] if m["name"] == model)
    return Counts(int(entry.get("inference_count", 0)), int(entry.get("execution_count", 0)))


def summarize(latencies_ms: np.ndarray) -> dict[str, float]:
    lat = np.asarray(latencies_ms, dtype=np.float64).reshape(-1)
    return {
        "n": int(lat.size),
        "mean_ms": float(lat.mean()),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
    }


# -- CLI -----------------------------------------------------------------------------------------


def read_series_file(path: Path) -> np.ndarray:
    """A 1-D series from .npy (1-D, or 2-D: first row) or .csv/.txt (the first numeric column)."""
    if path.suffix == ".npy":
        a = np.load(path)
        return np.asarray(a if a.ndim == 1 else a.reshape(a.shape[0], -1)[0], dtype=np.float32)
    values = []
    with path.open(newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            try:
                values.append(float(row[0]))
            except ValueError:
                if values:  # a header is fine, text in the middle is not
                    raise ValueError(f"{path}: {row[0]!r} after {len(values)} numbers is not a number") from None
    return np.asarray(values, dtype=np.float32)


def load_cli_series(args: argparse.Namespace) -> np.ndarray:
    """(S, T) rows to stream: the file's series or artifact series rows series..series+S-1 (wrapping)."""
    if args.series_file is not None:
        one = read_series_file(args.series_file)[: args.ticks]
        return np.tile(one, (args.sequences, 1))
    from models import data

    table = data.load_series(args.artifacts, args.split)  # (S_all, L)
    rows = (args.series + np.arange(args.sequences)) % table.shape[0]
    return np.ascontiguousarray(table[rows, : args.ticks], dtype=np.float32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="127.0.0.1:8001", help="server host:port (gRPC 8001, HTTP 8000)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    p.add_argument("--model", default=MODEL)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--series-file", type=Path, help=".npy or .csv with one series")
    src.add_argument("--artifacts", type=Path, help="artifacts folder of `make export` (reads its data/)")
    p.add_argument("--series", type=int, default=0, help="row of the artifacts' series (default 0)")
    p.add_argument("--split", default="test", help="split of the artifacts' series (default test)")
    p.add_argument("--ticks", type=int, default=200, help="ticks to stream per sequence (default 200)")
    p.add_argument("--sequences", type=int, default=1, help="concurrent sequences (default 1: print every tick)")
    p.add_argument("--sequence-id", type=int, help="id of the first sequence (default: a random 63-bit id)")
    p.add_argument("--unary", action="store_true", help="gRPC: one call per tick instead of one stream")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per request")
    args = p.parse_args(argv)
    if args.ticks < 1:
        p.error("--ticks must be at least 1")
    if args.sequences < 1:
        p.error("--sequences must be at least 1")
    if args.series_file is not None and not args.series_file.is_file():
        p.error(f"series file {args.series_file} does not exist")
    if args.sequence_id is not None and args.sequence_id < 1:
        p.error("--sequence-id must be at least 1 (Triton reserves 0)")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        series = load_cli_series(args)
    except (OSError, ValueError) as exc:
        print(f"error: cannot read the series: {exc}", file=sys.stderr)
        return 1
    if series.shape[1] == 0:
        print("error: the series is empty", file=sys.stderr)
        return 1
    try:
        before = model_counts(args.url, args.protocol, args.model)
        t0 = time.perf_counter()
        if args.sequences == 1:
            forecasts, lat = replay(
                args.url,
                series[0],
                args.sequence_id,
                args.protocol,
                args.model,
                args.timeout,
                False if args.unary else None,
            )
            for t in range(series.shape[1]):
                print(
                    f"tick {t:5d}  value {series[0, t]:12.4f}  {lat[t]:8.3f} ms  forecast[+1] {forecasts[t, 0]:12.4f}"
                )
            lat = lat[None]
        else:
            _, lat = replay_many(args.url, series, args.sequence_id, args.protocol, args.model, args.timeout)
        wall = time.perf_counter() - t0
        after = model_counts(args.url, args.protocol, args.model)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    s = summarize(lat)
    inferences, executions = after.inferences - before.inferences, after.executions - before.executions
    print(
        f"{args.model} over {args.protocol}: {args.sequences} sequence(s) x {series.shape[1]} ticks = {s['n']} "
        f"requests in {wall:.2f} s ({s['n'] / wall:.0f} ticks/s)"
    )
    print(
        f"latency per tick: p50 {s['p50_ms']:.3f} ms  p99 {s['p99_ms']:.3f} ms  mean {s['mean_ms']:.3f} ms  max {s['max_ms']:.3f} ms"
    )
    if executions > 0:
        print(
            f"server: {inferences} inferences in {executions} executions "
            f"({inferences / executions:.2f} ticks per execution; other clients' traffic included)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
