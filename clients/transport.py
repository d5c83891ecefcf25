"""tritonclient over gRPC and HTTP, sync and asyncio, behind one small interface per flavour.

Each transport talks to one endpoint, applies the attempt's deadline and maps every failure onto
`clients.errors`. An inference carries its priority and what is left of the attempt's deadline as
Triton's per-request timeout (microseconds): a model with priority lanes (`dynamic_batching {
priority_levels, priority_queue_policy }`) refuses it unanswered once it has queued that long, so a
late answer is never computed; other models ignore both. Sync transports are thread-safe: gRPC shares one channel, HTTP keeps one
connection per thread (geventhttpclient is not thread-safe). The HTTP deadline is a gevent timeout
around the call (the library's timeouts are fixed per client); a connection that timed out is
dropped, never reused. Async transports must be used from one event loop.
"""

from __future__ import annotations

import asyncio
import threading
from enum import IntEnum
from typing import Any

import gevent
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import np_to_triton_dtype

from clients.errors import ClientError, DeadlineExceededError, from_exception

PROTOCOLS = ("grpc", "http")
HTTP_SOCKET_TIMEOUT_S = 600.0  # outer bound only: every call carries its own, shorter deadline


class Priority(IntEnum):
    """The priority lanes of the served configs (nhits, reservoir, forecast_blend, so the forecast ensemble):
    `dynamic_batching { priority_levels: 3 default_priority_level: 2 }`. Triton takes the lowest level
    first. A request without a priority is NORMAL; a model without lanes ignores it."""

    CRITICAL = 1  # queued at most 10 ms (its deadline, if shorter), then refused: QueueTimeoutError
    NORMAL = 2
    BACKGROUND = 3  # bulk work: at most 32 requests queued, then refused: QueueFullError


def server_timeout_us(seconds: float) -> int:
    """An attempt's deadline as Triton's per-request timeout: at least 1 us (0 would mean none)."""
    return max(1, int(seconds * 1e6))


def parse_url(url: str, protocol: str = "grpc") -> tuple[str, str]:
    """'grpc://host:port', 'http://host:port' or 'host:port' (with `protocol`) -> (protocol, 'host:port')."""
    if "://" in url:
        protocol, url = url.split("://", 1)
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    if not url or ":" not in url:
        raise ValueError(f"endpoint {url!r} is not host:port")
    return protocol, url.rstrip("/")


def lib(protocol: str):
    return grpcclient if protocol == "grpc" else httpclient


def build_inputs(module, arrays: dict[str, np.ndarray]) -> list:
    inputs = []
    for name, a in arrays.items():
        tensor = module.InferInput(name, list(a.shape), np_to_triton_dtype(a.dtype))
        tensor.set_data_from_numpy(np.ascontiguousarray(a))
        inputs.append(tensor)
    return inputs


def build_outputs(module, names: list[str]) -> list:
    return [module.InferRequestedOutput(n) for n in names]


def extract(result, names: list[str]) -> dict[str, np.ndarray]:
    return {n: result.as_numpy(n) for n in names}


def model_limits(config: dict) -> tuple[int, list[int]]:
    """(max_batch_size, preferred batch sizes) from a model config as either protocol returns it."""
    config = config.get("config", config)
    preferred = config.get("dynamic_batching", {}).get("preferred_batch_size", [])
    return int(config.get("max_batch_size", 0)), [int(p) for p in preferred]


class Transport:
    """Sync calls to one endpoint."""

    def __init__(self, protocol: str, hostport: str):
        self.protocol = protocol
        self.hostport = hostport
        self.url = f"{protocol}://{hostport}"
        self.lib = lib(protocol)
        self._lock = threading.Lock()
        self._grpc: grpcclient.InferenceServerClient | None = None
        self._local = threading.local()
        self._http: list[httpclient.InferenceServerClient] = []

    # -- clients ------------------------------------------------------------------------------
    def client(self):
        if self.protocol == "grpc":
            with self._lock:
                if self._grpc is None:
                    self._grpc = grpcclient.InferenceServerClient(self.hostport)
                return self._grpc
        c = getattr(self._local, "client", None)
        if c is None:
            c = httpclient.InferenceServerClient(
                self.hostport, connection_timeout=HTTP_SOCKET_TIMEOUT_S, network_timeout=HTTP_SOCKET_TIMEOUT_S
            )
            self._local.client = c
            with self._lock:
                self._http.append(c)
        return c

    def _drop_thread_client(self) -> None:
        c = getattr(self._local, "client", None)
        if c is not None:
            self._local.client = None
            with self._lock:
                if c in self._http:
                    self._http.remove(c)
            c.close()

    def close(self) -> None:
        with self._lock:
            grpc, self._grpc = self._grpc, None
            https, self._http = self._http, []
        if grpc is not None:
            grpc.close()
        for c in https:
            c.close()
        self._local = threading.local()

    # -- calls --------------------------------------------------------------------------------
    def run(self, fn, timeout: float, where: str) -> Any:
        """fn(client, grpc_kwargs) within `timeout` seconds; failures mapped onto clients.errors."""
        try:
            if self.protocol == "grpc":
                return fn(self.client(), {"client_timeout": timeout})
            with gevent.Timeout(timeout):
                return fn(self.client(), {})
        except gevent.Timeout:
            self._drop_thread_client()  # a half-read response must never be read by the next call
            raise DeadlineExceededError(f"{where}: no answer within the deadline of {timeout:.3g} s") from None
        except ClientError:
            raise
        except Exception as exc:
            if self.protocol == "http" and isinstance(exc, OSError):
                self._drop_thread_client()
            raise from_exception(exc, where, timeout) from None

    def infer(
        self, model: str, arrays: dict[str, np.ndarray], outputs: list[str], timeout: float, priority: int = 0
    ) -> dict:
        inputs = build_inputs(self.lib, arrays)
        requested = build_outputs(self.lib, outputs)
        queue = {"priority": int(priority), "timeout": server_timeout_us(timeout)}
        result = self.run(
            lambda c, kw: c.infer(model, inputs, outputs=requested, **queue, **kw), timeout, self.where(model)
        )
        return extract(result, outputs)

    def ready(self, model: str | None, timeout: float) -> bool:
        try:
            if model is None:
                return bool(self.run(lambda c, kw: c.is_server_ready(**kw), timeout, self.url))
            return bool(self.run(lambda c, kw: c.is_model_ready(model, **kw), timeout, self.where(model)))
        except ClientError:
            return False

    def config(self, model: str, timeout: float) -> dict:
        if self.protocol == "grpc":
            return self.run(lambda c, kw: c.get_model_config(model, as_json=True, **kw), timeout, self.where(model))
        return self.run(lambda c, kw: c.get_model_config(model), timeout, self.where(model))

    def where(self, model: str) -> str:
        return f"{model} at {self.url}"


class AsyncTransport:
    """asyncio calls to one endpoint (tritonclient.grpc.aio / tritonclient.http.aio)."""

    def __init__(self, protocol: str, hostport: str):
        self.protocol = protocol
        self.hostport = hostport
        self.url = f"{protocol}://{hostport}"
        self.lib = lib(protocol)
        self._client = None

    def client(self):
        if self._client is None:  # created inside the running loop: aio channels bind to it
            if self.protocol == "grpc":
                import tritonclient.grpc.aio as grpcaio  # imported on first use: aiohttp & co. cost ~0.5 s

                self._client = grpcaio.InferenceServerClient(self.hostport)
            else:
                import tritonclient.http.aio as httpaio

                self._client = httpaio.InferenceServerClient(self.hostport, conn_timeout=HTTP_SOCKET_TIMEOUT_S)
        return self._client

    async def close(self) -> None:
        c, self._client = self._client, None
        if c is not None:
            await c.close()

    async def run(self, fn, timeout: float, where: str) -> Any:
        kw = {"client_timeout": timeout} if self.protocol == "grpc" else {}
        try:
            return await asyncio.wait_for(fn(self.client(), kw), timeout)
        except ClientError:
            raise
        except Exception as exc:
            raise from_exception(exc, where, timeout) from None

    async def infer(
        self, model: str, arrays: dict[str, np.ndarray], outputs: list[str], timeout: float, priority: int = 0
    ) -> dict:
        inputs = build_inputs(self.lib, arrays)
        requested = build_outputs(self.lib, outputs)
        queue = {"priority": int(priority), "timeout": server_timeout_us(timeout)}
        result = await self.run(
            lambda c, kw: c.infer(model, inputs, outputs=requested, **queue, **kw), timeout, self.where(model)
        )
        return extract(result, outputs)

    async def ready(self, model: str | None, timeout: float) -> bool:
        try:
            if model is None:
                return bool(await self.run(lambda c, kw: c.is_server_ready(**kw), timeout, self.url))
            return bool(await self.run(lambda c, kw: c.is_model_ready(model, **kw), timeout, self.where(model)))
        except ClientError:
            return False

    async def config(self, model: str, timeout: float) -> dict:
        if self.protocol == "grpc":
            return await self.run(
                lambda c, kw: c.get_model_config(model, as_json=True, **kw), timeout, self.where(model)
            )
        return await self.run(lambda c, kw: c.get_model_config(model), timeout, self.where(model))

    def where(self, model: str) -> str:
        return f"{model} at {self.url}"
