"""System shared memory for large batches (1,000 x 168 windows for nhits, 256 x 384 queries for similarity).

    with SharedMemoryClient("127.0.0.1:8001", key=admin_key) as c:   # the server must run on this host
        f = c.nhits(windows)       # the same API and typed results as clients.Client

Per model, one input and one output region sized for the model's max_batch_size are created and registered
with the server on first use and reused by every later call; `close()` unregisters and destroys them. A server
that restarted has forgotten every registration: a call that the server answers with "unable to find the shared
memory region" registers this client's regions again, once, and is sent again; the endpoint answered, so that is
not counted against its circuit breaker.
Registration goes through Triton's restricted shared-memory API: the admin key travels in the header
`common.triton.ADMIN_HEADER` (over gRPC Triton expects it as `triton-grpc-protocol-<header>`). Calls on one
model are serialised (they share its regions); validation, deadlines and retries are those of `Client`.

    python -m clients.shm --url 127.0.0.1:8001 --key-file build/triton-run/admin.key --iters 20

times plain vs shared-memory transfer (`compare`) and prints JSON.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import logging
import os
import secrets
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.utils import np_to_triton_dtype

from clients.client import Client, Endpoint
from clients.errors import ClientError, InferenceServerError
from clients.op import Op
from clients.transport import server_timeout_us
from common.triton import admin_headers
from models import spec

log = logging.getLogger("clients.shm")


def _shared_memory_module():
    """tritonclient.utils.shared_memory 2.51 imports `pkg_resources` only to find its libcshm.so; setuptools >= 81
    no longer ships that module. Give the import a stand-in for that one call, then take the stand-in away."""
    try:
        import tritonclient.utils.shared_memory as shm

        return shm
    except ModuleNotFoundError as exc:
        if exc.name != "pkg_resources":
            raise
    stand_in = types.ModuleType("pkg_resources")
    stand_in.resource_filename = lambda package, name: str(importlib.resources.files(package) / name)
    sys.modules["pkg_resources"] = stand_in
    try:
        import tritonclient.utils.shared_memory as shm
    finally:
        sys.modules.pop("pkg_resources", None)
    return shm


shm = _shared_memory_module()


@dataclass
class _Region:
    name: str  # the server's name for it; the POSIX key is "/<name>"
    byte_size: int
    handle: Any = None
    offsets: dict[str, int] = field(default_factory=dict)  # tensor name -> byte offset (room for max_batch rows)


@dataclass
class _Regions:
    inputs: _Region
    outputs: _Region
    capacity: int  # rows
    lock: threading.Lock = field(default_factory=threading.Lock)


def _row_bytes(t: spec.Tensor) -> int:
    return int(np.prod(t.dims)) * np.dtype(t.dtype).itemsize


def _layout(region: _Region, tensors, capacity: int) -> None:
    offset = 0
    for t in tensors:
        region.offsets[t.name] = offset
        offset += capacity * _row_bytes(t)
    region.byte_size = offset


def _forgotten(exc: ClientError) -> bool:
    """The server answered that it does not know a region of the request (Triton: NOT_FOUND, "Unable to find
    system shared memory region"): it restarted since this client registered."""
    text = str(exc).lower()
    return "shared memory region" in text and ("unable to find" in text or "not found" in text)


class SharedMemoryClient(Client):
    """`Client` whose tensors travel through system shared memory. One endpoint, on this host."""

    def __init__(self, url: str, *, key: str, protocol: str = "grpc", **options: Any):
        super().__init__(url, protocol=protocol, **options)
        if len(self.endpoints) != 1:
            raise ValueError("shared memory needs exactly one endpoint, on this host")
        self.key = key
        self.prefix = f"clients_{os.getpid()}_{secrets.token_hex(4)}"
        self._regions: dict[str, _Regions] = {}
        self._setup = threading.Lock()

    @property
    def headers(self) -> dict[str, str]:
        return admin_headers(self.key, self.endpoints[0].protocol)

    def region_names(self) -> list[str]:
        return [r.name for rs in self._regions.values() for r in (rs.inputs, rs.outputs)]

    def _regions_for(self, ep: Endpoint, op: Op, timeout: float) -> _Regions:
        with self._setup:
            if op.name in self._regions:
                return self._regions[op.name]
            cap = op.spec.max_batch_size
            regions = _Regions(
                _Region(f"{self.prefix}_{op.name}_in", 0), _Region(f"{self.prefix}_{op.name}_out", 0), cap
            )
            _layout(regions.inputs, op.spec.inputs, cap)
            _layout(regions.outputs, op.spec.outputs, cap)
            for r in (regions.inputs, regions.outputs):
                r.handle = shm.create_shared_memory_region(r.name, f"/{r.name}", r.byte_size)
            try:
                self._register(ep, regions, timeout)
            except ClientError:
                self._release(ep, regions, timeout)
                raise
            log.info("%s: registered %s and %s (%d rows)", op.name, regions.inputs.name, regions.outputs.name, cap)
            self._regions[op.name] = regions
            return regions

    def _register(self, ep: Endpoint, regions: _Regions, timeout: float) -> None:
        for r in (regions.inputs, regions.outputs):
            ep.transport.run(
                lambda c, kw, r=r: c.register_system_shared_memory(
                    r.name, f"/{r.name}", r.byte_size, headers=self.headers, **kw
                ),
                timeout,
                f"register {r.name} at {ep.url}",
            )

    def _attempt(
        self, ep: Endpoint, op: Op, arrays: dict[str, np.ndarray], timeout: float, priority: int = 0
    ) -> dict[str, np.ndarray]:
        batch = len(next(iter(arrays.values())))
        regions = self._regions_for(ep, op, timeout)
        if batch > regions.capacity or batch == 0:  # only with validate=False: let the server answer it
            return super()._attempt(ep, op, arrays, timeout, priority)
        lib = ep.transport.lib
        with regions.lock:
            inputs = []
            for name, a in arrays.items():
                a = np.ascontiguousarray(a)
                offset = regions.inputs.offsets[name]
                shm.set_shared_memory_region(regions.inputs.handle, [a], offset=offset)
                tensor = lib.InferInput(name, list(a.shape), np_to_triton_dtype(a.dtype))
                tensor.set_shared_memory(regions.inputs.name, a.nbytes, offset=offset)
                inputs.append(tensor)
            outputs = []
            for t in op.spec.outputs:
                out = lib.InferRequestedOutput(t.name)
                out.set_shared_memory(
                    regions.outputs.name, batch * _row_bytes(t), offset=regions.outputs.offsets[t.name]
                )
                outputs.append(out)
            queue = {"priority": int(priority), "timeout": server_timeout_us(timeout)}
            deadline = time.monotonic() + timeout
            try:
                result = ep.transport.run(
                    lambda c, kw: c.infer(op.name, inputs, outputs=outputs, **queue, **kw),
                    timeout,
                    ep.transport.where(op.name),
                )
            except ClientError as exc:
                if not _forgotten(exc):
                    raise
                log.warning("%s: the server no longer knows our regions (restarted?): registering them again", ep.url)
                self._register(ep, regions, max(deadline - time.monotonic(), 0.1))
                result = ep.transport.run(
                    lambda c, kw: c.infer(op.name, inputs, outputs=outputs, **queue, **kw),
                    max(deadline - time.monotonic(), 0.1),
                    ep.transport.where(op.name),
                )
            got = {}
            for t in op.spec.outputs:
                meta = result.get_output(t.name)
                shape = list(meta["shape"] if isinstance(meta, dict) else meta.shape)
                view = shm.get_contents_as_numpy(
                    regions.outputs.handle, np.dtype(t.dtype), shape, offset=regions.outputs.offsets[t.name]
                )
                got[t.name] = view.copy()  # the region is overwritten by the next call
            return got

    def _release(self, ep: Endpoint, regions: _Regions, timeout: float) -> None:
        for r in (regions.inputs, regions.outputs):
            try:
                ep.transport.run(
                    lambda c, kw, r=r: c.unregister_system_shared_memory(r.name, headers=self.headers, **kw),
                    timeout,
                    f"unregister {r.name} at {ep.url}",
                )
            except ClientError as exc:
                log.warning("could not unregister %s: %s", r.name, exc)
            if r.handle is not None:
                shm.destroy_shared_memory_region(r.handle)
                r.handle = None

    def close(self) -> None:
        ep = self.endpoints[0]
        with self._setup:
            regions, self._regions = list(self._regions.values()), {}
        for rs in regions:
            self._release(ep, rs, self.timeout)
        super().close()

    def server_regions(self, timeout: float = 5.0) -> list[str]:
        """Names of the system shared-memory regions the server has registered (every client's)."""
        ep = self.endpoints[0]
        if ep.protocol == "grpc":
            status = ep.transport.run(
                lambda c, kw: c.get_system_shared_memory_status(headers=self.headers, as_json=True, **kw),
                timeout,
                ep.url,
            )
            return sorted(status.get("regions", {}))
        status = ep.transport.run(
            lambda c, kw: c.get_system_shared_memory_status(headers=self.headers), timeout, ep.url
        )
        return sorted(r["name"] for r in status)


# ---------------------------------------------------------------------------------- benchmark

CASES = {"nhits": 1000, "similarity": 256}  # rows per request: 1,000 assets; a full similarity batch


def _inputs(model: str, rows: int, n: int, seed: int) -> list[np.ndarray]:
    """n distinct batches (distinct, so the response cache cannot answer a repeat)."""
    rng = np.random.default_rng(seed)
    dim = spec.MODELS[model].inputs[0].dims[0]
    out = []
    for _ in range(n):
        if model == "similarity":
            q = rng.standard_normal((rows, dim), dtype=np.float32)
            out.append(q / np.linalg.norm(q, axis=1, keepdims=True))
        else:
            steps = rng.standard_normal((rows, dim), dtype=np.float32) * 0.01
            out.append((100.0 * np.exp(np.cumsum(steps, axis=1))).astype(np.float32))
    return out


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95))}


def compare(
    url: str,
    n_iter: int = 20,
    *,
    key: str | None = None,
    protocol: str = "grpc",
    warmup: int = 2,
    seed: int | None = None,
) -> dict:
    """Time plain vs system-shared-memory transfer for nhits at 1,000 x 168 and similarity at 256 x 384.

    Returns {"url", "protocol", "n_iter", "models": {model: {"rows", "input_bytes", "plain_ms", "shm_ms",
    "speedup_p50", "client_cpu_ms", "max_abs_diff"}}}; plain_ms / shm_ms hold mean, p50, p95 of the round trip
    seen by the client (input check, transfer, inference, output read-back); client_cpu_ms the mean CPU time
    this process spent per call (serialising, copying), which other load on the machine does not inflate. Plain and shm calls alternate, each on inputs of its own never
    sent before (similarity has the response cache on: a repeat would be answered from it). max_abs_diff
    compares both transfers on the warm-up inputs. `key`: the server's admin key (default $TRITON_ADMIN_KEY).
    """
    key = key or os.environ.get("TRITON_ADMIN_KEY")
    if not key:
        raise InferenceServerError(
            "the shared-memory API needs the server's admin key: pass key= or set TRITON_ADMIN_KEY"
        )
    seed = secrets.randbits(32) if seed is None else seed
    report: dict[str, Any] = {"url": url, "protocol": protocol, "n_iter": n_iter, "models": {}}
    with Client(url, protocol=protocol) as plain, SharedMemoryClient(url, key=key, protocol=protocol) as fast:
        clients = {"plain": plain, "shm": fast}
        for model, rows in CASES.items():
            first = spec.MODELS[model].outputs[0].name
            diff = 0.0
            for x in _inputs(model, rows, warmup, seed):
                a, b = plain.infer(model, x), fast.infer(model, x)
                diff = max(diff, float(np.abs(a[first] - b[first]).max()))
            batches = _inputs(model, rows, 2 * n_iter, seed + 1)
            times: dict[str, list[float]] = {"plain": [], "shm": []}
            cpu: dict[str, list[float]] = {"plain": [], "shm": []}
            for i in range(n_iter):
                order = ("plain", "shm") if i % 2 == 0 else ("shm", "plain")
                for j, name in enumerate(order):
                    x = batches[2 * i + j]
                    t0, c0 = time.perf_counter(), time.process_time()
                    clients[name].infer(model, x)
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
            plain_s, shm_s = _stats(times["plain"]), _stats(times["shm"])
            report["models"][model] = {
                "rows": rows,
                "input_bytes": int(batches[0].nbytes),
                "plain_ms": plain_s,
                "shm_ms": shm_s,
                "speedup_p50": plain_s["p50"] / shm_s["p50"],
                "client_cpu_ms": {k: float(np.mean(v) * 1e3) for k, v in cpu.items()},
                "max_abs_diff": diff,
            }
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clients.shm", description="plain vs shared-memory transfer timings")
    p.add_argument("--url", required=True, help="host:port of a Triton server on this host")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--key-file", type=Path, help="file holding the server's admin key (default: $TRITON_ADMIN_KEY)")
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args(argv)
    if args.iters < 1:
        p.error("--iters must be >= 1")
    key = args.key_file.read_text().strip() if args.key_file else None
    try:
        print(json.dumps(compare(args.url, args.iters, key=key, protocol=args.protocol), indent=2))
    except (ClientError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
