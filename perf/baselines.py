"""In-process baselines, measured in the same run as the served numbers, on the same input data.

- eager: the PyTorch module of models/registry.py, one request per call in a Python loop, under
  torch.inference_mode() with PyTorch's default threads: the seeds' "CPU baseline" way of serving.
- ort: the exported ONNX (FP32 model.onnx or INT8 model.int8.onnx) in an ONNX Runtime session with the
  serving backend's options (intra-op threads of the model's cpu config, sequential) at a fixed batch.
- sentence_transformers: `SentenceTransformer.encode` of the exported encoder, one text per call.
- search loops (text search, one text per call, each ending in the exact top-k over the served catalog in
  PyTorch): `SentenceTransformer.encode` + top-k (the seeds' "CPU engine"), and the in-process FP32 encoder
  loop: `tokenizers` + model.onnx in ONNX Runtime + the same top-k.

Each timing runs `seconds` of wall time after a short warm-up: items/s and per-call p50/p99 (a Timing's dict).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common import ort as common_ort
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


def batches_of(rows: dict[str, np.ndarray], batch: int, limit: int = 64) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(rows.values())))
    idx = [(np.arange(batch) + i * batch) % n for i in range(min(limit, max(1, n // batch)))]
    return [{k: np.ascontiguousarray(v[i]) for k, v in rows.items()} for i in idx]


def _timing(what: str, batch: int, lat_s: list[float], total_s: float, threads: int) -> dict:
    ms = np.asarray(lat_s) * 1e3
    p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
    return asdict(Timing(what, batch, len(lat_s), round(total_s, 3), len(lat_s) * batch / total_s, p50, p99, threads))


def _loop(fns: dict[str, Callable[[dict], object]], feeds: list[dict], seconds: float) -> tuple[dict, float]:
    """Each fn called in turn on the same feed (the order reversed every other round, so that all see the same
    load from other work), after 3 warm-up calls each, until `seconds` passed and each made 5 calls."""
    for fn in fns.values():
        for i in range(3):
            fn(feeds[i % len(feeds)])
    lat: dict[str, list[float]] = {k: [] for k in fns}
    i, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or i < 5:
        for k in list(fns) if i % 2 == 0 else reversed(fns):
            t0 = time.perf_counter()
            fns[k](feeds[i % len(feeds)])
            lat[k].append(time.perf_counter() - t0)
        i += 1
    return lat, time.perf_counter() - start


def time_calls(what: str, fn: Callable[[dict], object], feeds: list[dict], seconds: float, threads: int) -> dict:
    lat, total = _loop({what: fn}, feeds, seconds)
    t = _timing(what, len(next(iter(feeds[0].values()))), lat[what], total, threads)
    log.info(
        "%-28s batch %4d: %9.1f items/s  p50 %7.2f ms  p99 %7.2f ms",
        what,
        t["batch"],
        t["throughput"],
        t["p50_ms"],
        t["p99_ms"],
    )
    return t


def eager(name: str, artifacts: Path, rows: dict[str, np.ndarray], seconds: float) -> dict:
    import torch

    from models.registry import load_model

    model = load_model(name, artifacts)
    feeds = [{k: torch.from_numpy(v) for k, v in f.items()} for f in batches_of(rows, 1)]
    order = [t.name for t in spec.MODELS[name].inputs]

    def call(feed):
        with torch.inference_mode():
            return model(*(feed[k] for k in order))

    return time_calls(f"{name} pytorch-eager", call, feeds, seconds, torch.get_num_threads())


def ort_session(name: str, repo: Path, precision: str, threads: int, profile_prefix: str | None = None):
    return common_ort.ort_session(spec.version_dir(name, repo) / FILES[precision], threads, profile_prefix)


def _run(sess, name: str) -> Callable[[dict], object]:
    return functools.partial(sess.run, [t.name for t in spec.MODELS[name].outputs])


def ort(name: str, repo: Path, precision: str, rows: dict, batch: int, seconds: float, threads: int) -> dict:
    run = _run(ort_session(name, repo, precision, threads), name)
    return time_calls(f"{name} ort-{precision}", run, batches_of(rows, batch), seconds, threads)


def config_threads(repo: Path, name: str) -> int:
    """intra_op_thread_count of the model's cpu config (0 there means ONNX Runtime's default: the core count)."""
    from common.triton import load_config
    from perf.model_analyzer import settings

    threads = settings(load_config(repo / name / "configs" / "cpu.pbtxt"))["threads"]
    return threads if threads > 0 else (os.cpu_count() or 1)


def op_profile(name: str, repo: Path, precision: str, rows: dict, batch: int, threads: int, runs: int = 10) -> dict:
    """Share of kernel time per ONNX op type (%), from ONNX Runtime's own profiler, largest first."""
    with tempfile.TemporaryDirectory(prefix="perf-ort-profile-") as tmp:
        sess = ort_session(name, repo, precision, threads, profile_prefix=os.path.join(tmp, "ort"))
        run, feeds = _run(sess, name), batches_of(rows, batch, limit=runs)
        for i in range(runs):
            run(feeds[i % len(feeds)])
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + float(e.get("dur", 0))
    total = sum(per_op.values()) or 1.0
    return {op: round(100 * t / total, 1) for op, t in sorted(per_op.items(), key=lambda kv: -kv[1])}


def paired(name: str, repo: Path, rows: dict, batch: int, seconds: float, threads: int) -> dict:
    """FP32 and INT8 ONNX Runtime sessions called alternately on the same inputs, so that both see the same
    load from other work on the shared cores: {"fp32": Timing, "int8": Timing} as dicts."""
    fns = {p: _run(ort_session(name, repo, p, threads), name) for p in FILES}
    lat, _ = _loop(fns, batches_of(rows, batch), seconds)
    out = {p: _timing(f"{name} ort-{p} (paired)", batch, v, float(sum(v)), threads) for p, v in lat.items()}
    i8, f32 = out["int8"]["p50_ms"], out["fp32"]["p50_ms"]
    pairs = len(lat["fp32"])
    log.info(
        "%-28s batch %4d: INT8 / FP32 p50 = %.2f (%.3f / %.3f ms, %d pairs)", name, batch, i8 / f32, i8, f32, pairs
    )
    return out


def sentence_transformers(artifacts: Path, texts: list[str], seconds: float) -> dict:
    import torch

    from models import real_data

    model = real_data.sentence_transformer(artifacts)
    feeds = [{"text": [t]} for t in texts[:64]]  # one text per call: the timing's batch is 1, not the text's length

    def encode(feed: dict) -> object:
        return model.encode(feed["text"], convert_to_numpy=True, show_progress_bar=False)

    return time_calls("SentenceTransformer.encode", encode, feeds, seconds, torch.get_num_threads())


def search_loops(artifacts: Path, repo: Path, texts: list[str], seconds: float) -> dict:
    """Two in-process text searches, one text per call, called alternately on the same texts (so both see the
    same load): SentenceTransformer.encode + exact top-k in PyTorch, and tokenizers + the FP32 ONNX encoder
    (ONNX Runtime, one session with the machine's cores as intra-op threads) + the same top-k."""
    import torch

    from models import data, real_data

    catalog = torch.from_numpy(np.ascontiguousarray(data.load_embeddings(artifacts)[0]))  # (N, D)
    model = real_data.sentence_transformer(artifacts)
    tok = real_data.load_tokenizer(real_data.tokenizer_json(artifacts))
    threads = os.cpu_count() or 1
    sess = ort_session("text_encoder", repo, "fp32", threads)
    k = spec.TOP_K

    def topk(query) -> tuple:
        with torch.inference_mode():
            return torch.topk(catalog @ torch.as_tensor(query).reshape(-1), k)

    def st(feed: dict) -> object:
        return topk(model.encode(feed["text"], convert_to_numpy=True, show_progress_bar=False))

    def onnx_loop(feed: dict) -> object:
        ids, mask = real_data.tokenize(tok, feed["text"])
        return topk(sess.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0])

    feeds = [{"text": [t]} for t in texts[:256]]
    fns = {"SentenceTransformer.encode + top-k": st, "FP32 ONNX encoder loop + top-k": onnx_loop}
    lat, total = _loop(fns, feeds, seconds)
    out = {}
    for key, what in (
        ("st_topk", "SentenceTransformer.encode + top-k"),
        ("encoder_loop", "FP32 ONNX encoder loop + top-k"),
    ):
        t = _timing(what, 1, lat[what], float(sum(lat[what])), torch.get_num_threads() if key == "st_topk" else threads)
        log.info("%-36s %9.1f texts/s  p50 %7.2f ms  p99 %7.2f ms", what, t["throughput"], t["p50_ms"], t["p99_ms"])
        out[key] = t
    out["catalog_rows"] = int(catalog.shape[0])
    return out
