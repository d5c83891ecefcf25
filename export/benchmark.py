"""Latency and throughput: PyTorch eager vs ONNX Runtime FP32 vs ONNX Runtime INT8, in one run.

    python -m export.benchmark --artifacts artifacts --repo model_repository [--small] [--threads 2]

Per model and batch size (1 and 64) on real test-split inputs: median and p99
latency of single calls, and throughput (samples/s over the timed calls). Every
runtime gets the same thread count. Results: `<artifacts>/reports/benchmark.json`.
`--small` times a handful of calls (seconds in total) and is for tests, not for numbers.

One thread by default: on a shared 2-core node, PyTorch with two
threads was measured up to 25x slower under load (its OpenMP regions wait for a
descheduled thread), and ONNX Runtime slower too. Pass `--threads` on a quiet machine.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import CliError, OneLineParser, require_dir, run_main, setup_logging
from common.files import write_json
from common.ort import ort_session
from export import graphs
from models import spec

log = logging.getLogger("export.benchmark")

PROG = "export.benchmark"
BATCHES = (1, 64)
RUNTIMES = ("torch", "ort_fp32", "ort_int8")
# (seconds per measurement, most calls, fewest calls, warm-up calls)
FULL = (1.0, 1000, 5, 3)
SMALL = (0.05, 5, 2, 1)


def measure(fn: Callable[[], Any], budget_s: float, max_iters: int, min_iters: int, warmup: int) -> dict[str, float]:
    """Call fn until budget_s has passed (at least min_iters, at most max_iters times)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    arr = np.array(times)
    return {
        "median_ms": float(np.median(arr) * 1e3),
        "p99_ms": float(np.percentile(arr, 99) * 1e3),
        "mean_ms": float(arr.mean() * 1e3),
        "calls": len(times),
    }


def bench_model(
    name: str, artifacts: Path, repo: Path, settings: tuple[float, int, int, int], threads: int
) -> dict[str, Any]:
    import torch

    from models import registry

    vdir = spec.version_dir(name, repo)
    for f in (spec.ONNX_FP32, spec.ONNX_INT8):
        if not (vdir / f).is_file():
            raise CliError(f"{name}: {vdir / f} is missing; run export.onnx_export and calibration.calibrate first")
    model = registry.load_model(name, artifacts)
    inputs = tuple(registry.example_inputs(name, artifacts, "test", max(BATCHES)))
    input_names, _ = graphs.io_names(name)
    sessions = {
        "ort_fp32": ort_session(vdir / spec.ONNX_FP32, threads),
        "ort_int8": ort_session(vdir / spec.ONNX_INT8, threads),
    }
    meta = sessions["ort_int8"].get_modelmeta().custom_metadata_map
    result: dict[str, Any] = {"int8_scheme": meta.get("int8.scheme", "unknown")}
    for batch in BATCHES:
        tensors = tuple(t[:batch].contiguous() for t in inputs)
        feeds = {n: t.numpy() for n, t in zip(input_names, tensors, strict=True)}

        def run_torch(tensors: tuple = tensors) -> None:
            with torch.inference_mode():
                model(*tensors)

        calls: dict[str, Callable[[], Any]] = {
            "torch": run_torch,
            "ort_fp32": lambda feeds=feeds: sessions["ort_fp32"].run(None, feeds),
            "ort_int8": lambda feeds=feeds: sessions["ort_int8"].run(None, feeds),
        }
        row = {}
        for runtime in RUNTIMES:
            m = measure(calls[runtime], *settings)
            m["throughput_per_s"] = batch / (m["mean_ms"] / 1e3)
            row[runtime] = m
            log.info(
                "%-16s batch %-3d %-8s median %8.3f ms  p99 %8.3f ms  %10.0f/s",
                name,
                batch,
                runtime,
                m["median_ms"],
                m["p99_ms"],
                m["throughput_per_s"],
            )
        result[f"batch_{batch}"] = row
    return result


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, required=True, help="artifacts directory (data/, checkpoints/, reports/)")
    p.add_argument("--repo", type=Path, required=True, help="model repository holding <model>/1/model*.onnx")
    p.add_argument("--models", help=f"comma-separated subset of {','.join(graphs.ALL_MODELS)} (default: all)")
    p.add_argument("--small", action="store_true", help="a few calls per measurement (tests), not for numbers")
    p.add_argument(
        "--threads", type=int, default=1, help="threads for PyTorch and ONNX Runtime alike (default %(default)s)"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = graphs.parse_models(args.models)
    require_dir(args.artifacts, "artifacts directory")
    require_dir(args.repo, "model repository")
    spec.use_dims_of(args.artifacts)  # the window, horizon and embedding sizes training used
    if args.threads < 1:
        raise CliError(f"--threads must be at least 1, got {args.threads}")
    setup_logging(args.verbose)

    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    settings = SMALL if args.small else FULL
    t0 = time.perf_counter()
    models = {name: bench_model(name, args.artifacts, args.repo, settings, args.threads) for name in names}
    report = {
        "small": args.small,
        "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "settings": dict(zip(("budget_s", "max_calls", "min_calls", "warmup"), settings, strict=True)),
        "inputs": "test split (models.registry.example_inputs), first 1 / 64 samples",
        "throughput": "batch / mean latency of single calls (samples per second)",
        "seconds": round(time.perf_counter() - t0, 1),
        "models": models,
    }
    path = graphs.reports_dir(args.artifacts) / "benchmark.json"
    write_json(path, report)
    print(f"benchmarked {', '.join(names)} in {report['seconds']:.0f}s ({args.threads} threads); report {path}")
    return 0


if __name__ == "__main__":
    run_main(PROG, main)
