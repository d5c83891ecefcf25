"""In-process baselines measured in the same run as the served numbers, on the same input data.

- eager: the PyTorch module of models/registry.py called with one request at a time in a Python loop,
  under torch.inference_mode() with PyTorch's default thread count: the seeds' "CPU baseline" way of
  serving.
- ort: the exported ONNX (FP32 model.onnx or INT8 model.int8.onnx) in an ONNX Runtime session with the
  session options of the serving backend (intra-op threads of the model's cpu config, sequential), at
  batch 1, at the batch the server formed, and at batch 64.

- sentence_transformers: `SentenceTransformer.encode` of the packaged all-MiniLM-L6-v2, one text per call
  (the in-process way to embed a query), on the text-search scenario's texts.

Each timing runs `seconds` of wall time after a short warm-up and reports items/s and per-call p50/p99.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models import spec

log = logging.getLogger(__name__)
FILES = {"fp32": spec.ONNX_FP32, "int8": spec.ONNX_INT8}


@dataclass
class Timing:
    what: str
    batch: int
    calls: int
    seconds: float
    throughput: float  # items (rows) per second
    p50_ms: float
    p99_ms: float
    threads: int

    def as_dict(self) -> dict:
        return asdict(self)


def batches_of(rows: dict[str, np.ndarray], batch: int, limit: int = 64) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(rows.values())))
    out = []
    for i in range(min(limit, max(1, n // batch))):
        idx = (np.arange(batch) + i * batch) % n
        out.append({k: np.ascontiguousarray(v[idx]) for k, v in rows.items()})
    return out


def _timing(what: str, batch: int, lat_s: list[float], total_s: float, threads: int) -> Timing:
    ms = np.asarray(lat_s) * 1e3
    p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
    return Timing(what, batch, len(lat_s), round(total_s, 3), len(lat_s) * batch / total_s, p50, p99, threads)


def time_calls(
    what: str, fn: Callable[[dict], object], feeds: list[dict], seconds: float, threads: int, warmup: int = 3
) -> Timing:
    for i in range(warmup):
        fn(feeds[i % len(feeds)])
    lat = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn(feeds[len(lat) % len(feeds)])
        t1 = time.perf_counter()
        lat.append(t1 - t0)
        if t1 - start >= seconds and len(lat) >= 5:
            break
    t = _timing(what, len(next(iter(feeds[0].values()))), lat, time.perf_counter() - start, threads)
    log.info(
        "%-28s batch %4d: %9.1f items/s  p50 %7.2f ms  p99 %7.2f ms", what, t.batch, t.throughput, t.p50_ms, t.p99_ms
    )
    return t


def eager(name: str, artifacts: Path, rows: dict[str, np.ndarray], seconds: float) -> Timing:
    """PyTorch eager, batch 1, one call per request in a loop."""
    import torch

    from models.registry import load_model

    model = load_model(name, artifacts)
    feeds = [{k: torch.from_numpy(v) for k, v in f.items()} for f in batches_of(rows, 1)]
    order = [t.name for t in spec.MODELS[name].inputs]

    def call(feed):
        with torch.inference_mode():
            return model(*(feed[k] for k in order))

    return time_calls(f"{name} pytorch-eager", call, feeds, seconds, torch.get_num_threads())


def ort_session(path: Path, threads: int, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session with the serving backend's options (`profile_prefix`: ORT's profiler on)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort(
    name: str, repo: Path, precision: str, rows: dict[str, np.ndarray], batch: int, seconds: float, threads: int
) -> Timing:
    """ONNX Runtime in this process at a fixed batch, the serving backend's session options."""
    sess = ort_session(spec.version_dir(name, repo) / FILES[precision], threads)
    outputs = [t.name for t in spec.MODELS[name].outputs]
    feeds = batches_of(rows, batch)
    return time_calls(f"{name} ort-{precision}", lambda f: sess.run(outputs, f), feeds, seconds, threads)


def config_threads(repo: Path, name: str) -> int:
    """intra_op_thread_count of the model's cpu config (0 there means ONNX Runtime's default: the core count)."""
    import os

    from serving.repository import load_config

    cfg = load_config(repo / name / "configs" / "cpu.pbtxt")
    value = cfg.parameters["intra_op_thread_count"].string_value if "intra_op_thread_count" in cfg.parameters else "0"
    threads = int(value or 0)
    return threads if threads > 0 else (os.cpu_count() or 1)


def op_profile(
    name: str, repo: Path, precision: str, rows: dict[str, np.ndarray], batch: int, threads: int, runs: int = 10
) -> dict[str, float]:
    """Share of kernel time per ONNX op type (%), from ONNX Runtime's own profiler, largest first."""
    import json
    import os
    import tempfile

    path = spec.version_dir(name, repo) / FILES[precision]
    with tempfile.TemporaryDirectory(prefix="perf-ort-profile-") as tmp:
        sess = ort_session(path, threads, profile_prefix=os.path.join(tmp, "ort"))
        outputs = [t.name for t in spec.MODELS[name].outputs]
        feeds = batches_of(rows, batch, limit=runs)
        for i in range(runs):
            sess.run(outputs, feeds[i % len(feeds)])
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + float(e.get("dur", 0))
    total = sum(per_op.values()) or 1.0
    return {op: round(100 * t / total, 1) for op, t in sorted(per_op.items(), key=lambda kv: -kv[1])}


def paired(name: str, repo: Path, rows: dict[str, np.ndarray], batch: int, seconds: float, threads: int) -> dict:
    """FP32 and INT8 ONNX Runtime sessions called alternately on the same inputs, so that both see the same
    load from other work on the shared cores: {"fp32": Timing, "int8": Timing} as dicts."""
    sessions = {p: ort_session(spec.version_dir(name, repo) / f, threads) for p, f in FILES.items()}
    outputs = [t.name for t in spec.MODELS[name].outputs]
    feeds = batches_of(rows, batch)
    for sess in sessions.values():
        for f in feeds[:3]:
            sess.run(outputs, f)
    lat: dict[str, list[float]] = {p: [] for p in sessions}
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds or i < 5:
        for p in list(sessions) if i % 2 == 0 else list(reversed(sessions)):
            t0 = time.perf_counter()
            sessions[p].run(outputs, feeds[i % len(feeds)])
            lat[p].append(time.perf_counter() - t0)
        i += 1
    out = {p: _timing(f"{name} ort-{p} (paired)", batch, v, float(sum(v)), threads).as_dict() for p, v in lat.items()}
    i8, f32 = out["int8"]["p50_ms"], out["fp32"]["p50_ms"]
    log.info(
        "%-28s batch %4d: INT8 / FP32 p50 = %.2f (%.3f / %.3f ms, %d pairs)",
        f"{name} paired",
        batch,
        i8 / f32,
        i8,
        f32,
        i,
    )
    return out


def sentence_transformers(artifacts: Path, texts: list[str], seconds: float) -> Timing:
    """SentenceTransformer.encode at batch 1 with PyTorch's default threads: the search's in-process baseline."""
    import torch

    from models import real_data

    model = real_data.sentence_transformer(artifacts)
    feeds = [{"text": [t]} for t in texts[:64]]  # one text per call: the timing's batch is 1, not the text's length

    def encode(feed: dict) -> object:
        return model.encode(feed["text"], convert_to_numpy=True, show_progress_bar=False)

    return time_calls("SentenceTransformer.encode", encode, feeds, seconds, torch.get_num_threads())
