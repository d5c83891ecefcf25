"""GPU probe: in-process latency and throughput of every model, per batch size and execution variant.

    python -m perf.gpu_probe --device cuda --out perf/results/gpu_probe.json      # on a GPU machine
    python -m perf.gpu_probe --device cpu --reduced --out /tmp/probe.json         # a few seconds, here

What is measured and how: docs/GPU.md. Output: JSON matching perf.gpu.schema.PROBE_SCHEMA (perf.gpu.report
renders it), one log line per row. `--reduced` keeps the schema and shrinks everything (batches 1 and 8,
small stand-ins, few iterations) so CI runs it on CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import spec
from models.reservoir import Reservoir
from models.similarity import Similarity
from perf import environment
from perf.gpu import schema, weights

log = logging.getLogger("perf.gpu_probe")

# The three seed-claim families first: if the deadline cuts a run short, it cuts the ensembles.
MODELS = ("nhits", "reservoir", "similarity", "user_embedding", "forecast_blend", "forecast", "recommend")
BATCHES = (1, 8, 64, 256)
EXTRA_BATCHES = {"nhits": (128, 1000)}  # the seed's batch-128 claim and its 1,000-asset claim
MAX_BATCH = {"forecast": 256, "recommend": 256} | {m.name: m.max_batch_size for m in spec.MODELS.values()}
VARIANTS = tuple(
    "eager/fp32 eager/amp_fp16 eager/amp_bf16 eager/fp16w eager/bf16w graph/fp32 graph/amp_fp16 graph/fp16w "
    "compile/fp32".split()
)
REDUCED_CPU_VARIANTS = ("eager/fp32", "eager/amp_bf16")  # fp16 matmuls have no fast CPU path
TABLE_MODELS = ("user_embedding", "recommend")  # read only the gathered rows of the user table
HALF = {"fp16w": torch.float16, "bf16w": torch.bfloat16}
AMP = {"amp_fp16": torch.float16, "amp_bf16": torch.bfloat16}
RATE_KEY = {"fp32": "fp32", "amp_fp16": "fp16", "fp16w": "fp16", "amp_bf16": "bf16", "bf16w": "bf16"}


@dataclass(frozen=True)
class Profile:
    batches: tuple[int, ...]
    n_items: int
    n_users: int
    budget_s: float  # time spent on the latency loop of one case (the throughput loop repeats its count)
    min_iters: int
    max_iters: int
    n_sets: int  # distinct input sets cycled through, so repeated calls do not re-read one cached input
    copy_bytes: int
    matmul_size: int
    warmup: int
    reservoir_units: int  # synthetic reservoirs only; checkpoints keep their own size


FULL = Profile(BATCHES, spec.N_ITEMS, spec.N_USERS, 0.25, 100, 2000, 8, 1 << 30, 8192, 3, spec.RESERVOIR_UNITS)
# CI smoke on 2 shared cores: the same code paths and schema on shrunken stand-ins.
REDUCED = Profile((1, 8), 4096, 4096, 0.01, 3, 10, 2, 32 << 20, 256, 1, 128)


# ------------------------------------------------------------------------------ device helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentiles(lat_ms: list[float]) -> dict[str, float]:
    a = np.asarray(lat_ms, dtype=np.float64)
    stats = {"median": np.median(a), "p95": np.percentile(a, 95), "p99": np.percentile(a, 99)}
    return {k: round(float(v), 5) for k, v in (stats | {"mean": a.mean(), "min": a.min()}).items()}


def measure(fn, batch: int, device: torch.device, prof: Profile) -> tuple[dict[str, float], float, int]:
    """Warm up, then per-call latency (synchronised each call) and back-to-back throughput (items/s)."""
    t0, n = time.perf_counter(), 0
    while n < prof.warmup or (time.perf_counter() - t0 < min(0.2, prof.budget_s) and n < 50):
        fn(n)
        sync(device)
        n += 1
    per_call = (time.perf_counter() - t0) / n
    iters = int(min(max(prof.budget_s / max(per_call, 1e-7), prof.min_iters), prof.max_iters))
    lat: list[float] = []
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for i in range(iters):
            start.record()
            fn(i)
            end.record()
            end.synchronize()
            lat.append(start.elapsed_time(end))
    else:
        for i in range(iters):
            t = time.perf_counter()
            fn(i)
            lat.append((time.perf_counter() - t) * 1e3)
    sync(device)
    t = time.perf_counter()
    for i in range(iters):
        fn(i)
    sync(device)
    total = time.perf_counter() - t
    return percentiles(lat), round(batch * iters / total, 2), iters


def measure_ceilings(device: torch.device, prof: Profile) -> dict:
    """Device-to-device copy bandwidth (bytes read + written) and matmul rate per dtype, on random data."""

    def timed(fn, budget: float) -> float:
        """Best of several synchronised calls: a ceiling is the best the device does."""
        fn()
        sync(device)
        start, best, n = time.perf_counter(), float("inf"), 0
        while n < prof.warmup + 1 or (time.perf_counter() - start < budget and n < 20):
            t = time.perf_counter()
            fn()
            sync(device)
            best = min(best, time.perf_counter() - t)
            n += 1
        return best

    budget = 0.3 if device.type == "cuda" else prof.budget_s * 5
    x = torch.randn(prof.copy_bytes // 4, device=device)
    y = torch.empty_like(x)
    copy_s = timed(lambda x=x, y=y: y.copy_(x), budget)
    del x, y
    size = prof.matmul_size if device.type == "cuda" else min(prof.matmul_size, 1024)
    tflops = {}
    for key, dt in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size, device=device).to(dt)
        b = torch.randn(size, size, device=device).to(dt)
        mm_s = timed(lambda a=a, b=b: torch.mm(a, b), budget)
        tflops[key] = round(2 * size**3 / mm_s / 1e12, 4)
        del a, b
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "copy_gbps": round(2 * prof.copy_bytes / copy_s / 1e9, 2),
        "copy_bytes": prof.copy_bytes,
        "matmul_size": size,
        "matmul_tflops": tflops,
    }


# ------------------------------------------------------------------------------ variants


def flops_per_row(module: nn.Module) -> float:
    """Matmul FLOPs of one input row (the element-wise work is small beside it)."""
    total = 0
    for m in module.modules():
        if isinstance(m, nn.Linear):
            total += 2 * m.in_features * m.out_features
        elif isinstance(m, Reservoir):  # the first step multiplies W by the zero state and is skipped
            n = m.cfg.units  # each unit reads its block's (or the whole W's) w.shape[1] states per step
            total += 2 * n * m.w.shape[1] * (m.cfg.window - 1) + 2 * n * m.cfg.horizon
        elif isinstance(m, Similarity):
            total += 2 * m.catalog_t.numel()
    return float(total)


def min_bytes(model: str, module: nn.Module, precision: str, xs: tuple[torch.Tensor, ...], out) -> float:
    """Each weight read once (not the user table: only its gathered rows), each input and output once."""
    store = 2 if precision in HALF else 4
    tensors = [*module.named_parameters(), *module.named_buffers()]
    n = sum(t.numel() for name, t in tensors if not name.endswith("table") and t.is_floating_point())
    gathered = xs[0].shape[0] * spec.EMBED_DIM * 2 if model in TABLE_MODELS else 0  # read + written
    io = sum(x.numel() * x.element_size() for x in xs)
    io += sum(o.numel() * (4 if o.is_floating_point() else o.element_size()) for o in out)  # served as fp32 / int64
    return float((n + gathered) * store + io)


def floor(bytes_: float, flops: float, precision: str, ceilings: dict, median_ms: float | None) -> dict:
    bytes_ms = bytes_ / (ceilings["copy_gbps"] * 1e9) * 1e3
    flops_ms = flops / (ceilings["matmul_tflops"][RATE_KEY[precision]] * 1e12) * 1e3
    floor_ms = max(bytes_ms, flops_ms)
    return {
        "bytes": bytes_,
        "flops": flops,
        "bytes_ms": round(bytes_ms, 6),
        "flops_ms": round(flops_ms, 6),
        "floor_ms": round(floor_ms, 6),
        "bound": "memory" if bytes_ms >= flops_ms else "compute",
        "fraction": round(floor_ms / median_ms, 4) if median_ms else None,
    }


def row(model: str, batch: int, variant: str, timer: str, status: str = "ok", reason: str | None = None) -> dict:
    mode, precision = variant.split("/")
    out = {"model": model, "batch": batch, "variant": variant, "mode": mode, "precision": precision}
    return dict.fromkeys(schema.RESULT) | out | {"status": status, "reason": reason, "timer": timer, "iters": 0}


def first_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300]


class Probe:
    def __init__(self, args: argparse.Namespace, prof: Profile, device: torch.device):
        self.args, self.prof, self.device = args, prof, device
        self.timer = "cuda_events" if device.type == "cuda" else "perf_counter"
        self.deadline = time.monotonic() + args.deadline_s
        self.compile_spent = 0.0
        self.modules: dict[str, nn.Module] = {}
        self.sources: dict[str, str] = {}
        self.converted: dict[tuple[str, str], nn.Module] = {}
        self.compiled: dict[str, nn.Module] = {}
        self.kernels: dict[str, int | None] = {}

    def reservoir_units(self) -> int:
        for m in self.modules.values():
            for name, t in m.named_buffers():
                if name.endswith("w_in"):
                    return t.shape[0]
        return self.prof.reservoir_units

    def variants(self) -> tuple[str, ...]:
        return tuple(self.args.variants) if self.args.variants else VARIANTS

    def skip_reason(self, model: str, batch: int, variant: str) -> str | None:
        mode, precision = variant.split("/")
        if mode == "graph" and self.device.type != "cuda":
            return "CUDA graphs need a CUDA device"
        if self.device.type == "cpu" and self.args.reduced and variant not in REDUCED_CPU_VARIANTS:
            return "not run on CPU in --reduced mode (GPU only)"
        if mode == "compile":
            if not self.args.compile:
                return "torch.compile not requested (--compile)"
            if model not in self.args.compile_models or batch not in self.args.compile_batches:
                return "torch.compile limited to --compile-models x --compile-batches"
            if self.compile_spent > self.args.compile_budget_s:
                return f"torch.compile budget of {self.args.compile_budget_s:.0f} s spent"
        if time.monotonic() > self.deadline:
            return f"probe deadline of {self.args.deadline_s:.0f} s reached"
        return None

    def module_for(self, model: str, precision: str) -> nn.Module:
        key = (model, precision if precision in HALF else "fp32")
        if key not in self.converted:
            m = self.modules[model]
            self.converted[key] = (copy.deepcopy(m).to(HALF[precision]) if precision in HALF else m).to(self.device)
        return self.converted[key]

    def run(self) -> list[dict]:
        args, prof, dev = self.args, self.prof, self.device
        self.modules, self.sources = weights.load_all(
            args.artifacts, tuple(args.models), prof.n_items, prof.n_users, prof.reservoir_units
        )
        results = []
        for model in args.models:
            reference = copy.deepcopy(self.modules[model]).to("cpu").double()
            for batch in self.batches(model):
                sets = weights.inputs(model, batch, prof.n_sets, prof.n_users)
                with torch.inference_mode():
                    ref = reference(
                        *(torch.from_numpy(x.astype(np.float64) if x.dtype.kind == "f" else x) for x in sets[0])
                    )
                ref = ref if isinstance(ref, tuple) else (ref,)
                dev_sets = [tuple(torch.from_numpy(x).to(dev) for x in s) for s in sets]
                flops = batch * flops_per_row(self.modules[model])
                for variant in self.variants():
                    r = self.case(model, batch, variant, dev_sets, [t.numpy() for t in ref])
                    if r["status"] == "ok":
                        nbytes = min_bytes(model, self.modules[model], r["precision"], dev_sets[0], ref)
                        r["floor"] = floor(nbytes, flops, r["precision"], self.ceilings, r["latency_ms"]["median"])
                    results.append(r)
                    self.log_row(r)
                if batch == 1:
                    self.kernels[model] = self.kernels_per_call(model, dev_sets)
                del dev_sets
            del reference
            self.converted = {k: v for k, v in self.converted.items() if k[0] != model}
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        return results

    def runner(self, model: str, precision: str) -> weights.Runner:
        return weights.Runner(
            self.module_for(model, precision), HALF.get(precision), AMP.get(precision), self.device.type
        )

    def kernels_per_call(self, model: str, dev_sets) -> int | None:
        """GPU activities (kernels, copies) of one eager FP32 call: how launch-bound a model is."""
        if self.device.type != "cuda":
            return None
        try:
            from torch.autograd import DeviceType
            from torch.profiler import ProfilerActivity, profile

            runner = self.runner(model, "fp32")
            with torch.inference_mode():
                runner(*dev_sets[0])
                sync(self.device)
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    runner(*dev_sets[0])
                    sync(self.device)
            return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)
        except Exception as exc:  # the profiler is a nicety: never fail the probe on it
            log.warning("kernel count for %s failed: %s", model, first_line(exc))
            return None

    def batches(self, model: str) -> list[int]:
        if self.args.batches:
            base = tuple(self.args.batches)
        else:
            base = self.prof.batches + (() if self.args.reduced else EXTRA_BATCHES.get(model, ()))
        return sorted(b for b in set(base) if b <= MAX_BATCH[model])

    def case(self, model: str, batch: int, variant: str, dev_sets, ref: list[np.ndarray]) -> dict:
        if (reason := self.skip_reason(model, batch, variant)) is not None:
            return row(model, batch, variant, self.timer, "skipped", reason)
        mode, precision = variant.split("/")
        r, n = row(model, batch, variant, self.timer), len(dev_sets)
        try:
            with torch.inference_mode():
                call = runner = self.runner(model, precision)
                if mode == "compile":
                    call, r["compile_s"] = self.compile(model, runner, dev_sets[0])
                if mode == "graph":
                    fn, out = self.graph(runner, dev_sets)
                else:

                    def fn(i: int, call=call):
                        return call(*dev_sets[i % n])

                    out = fn(0)
                r["rel_err"], r["topk_agreement"] = weights.compare([o.cpu().numpy() for o in out], ref)
                if not np.isfinite(r["rel_err"]):
                    raise FloatingPointError("non-finite output")
                r["rel_err"] = float(f"{r['rel_err']:.3e}")
                r["latency_ms"], r["throughput_per_s"], r["iters"] = measure(fn, batch, self.device, self.prof)
        except Exception as exc:  # one variant failing (compile, capture, dtype) must not end the probe
            log.warning("%s batch %d %s failed: %s", model, batch, variant, first_line(exc))
            r = row(model, batch, variant, self.timer, "failed", first_line(exc))
        return r

    def graph(self, runner: weights.Runner, dev_sets):
        static_in = tuple(x.clone() for x in dev_sets[0])
        graph, static_out = weights.capture(runner, static_in)
        for o in static_out:  # poison: every element must be written by the replay that is checked
            o.fill_(float("nan") if o.is_floating_point() else -1)
        graph.replay()
        sync(self.device)
        if any((o < 0).any() for o in static_out if not o.is_floating_point()):
            raise RuntimeError("graph replay left integer outputs unwritten")
        out, n = tuple(o.clone() for o in static_out), len(dev_sets)

        def fn(i: int):  # holds the graph as long as it is timed
            for s, x in zip(static_in, dev_sets[i % n], strict=True):
                s.copy_(x, non_blocking=True)
            graph.replay()
            return static_out

        return fn, out

    def compile(self, model: str, runner: weights.Runner, xs) -> tuple[nn.Module, float]:
        """The compiled runner (one per model) and the seconds its first call took."""
        if model not in self.compiled:
            self.compiled[model] = torch.compile(runner, dynamic=False, mode=self.args.compile_mode)
        t = time.perf_counter()
        try:
            self.compiled[model](*xs)
            sync(self.device)
        finally:
            self.compile_spent += time.perf_counter() - t
        return self.compiled[model], round(time.perf_counter() - t, 2)

    def log_row(self, r: dict) -> None:
        where = f"{r['model']:<15} b={r['batch']:<4d} {r['variant']:<15}"
        if r["status"] != "ok":
            log.info("%s %s: %s", where, r["status"], r["reason"])
            return
        lat, agree, fraction = r["latency_ms"], r["topk_agreement"], (r["floor"] or {}).get("fraction")
        log.info(
            "%s median %.4f ms  p99 %.4f ms  %.0f/s  err %.1e  top-k %s  floor %s",
            *(where, lat["median"], lat["p99"], r["throughput_per_s"], r["rel_err"]),
            *("-" if v is None else f"{v:.3f}" for v in (agree, fraction)),
        )


# ------------------------------------------------------------------------------ machine facts


def machine(device: torch.device) -> dict:
    gpu = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        l2 = getattr(p, "L2_cache_size", None)
        try:  # torch does not report the driver
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            driver = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout.split()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            driver = None
        gpu = {
            "name": p.name,
            "capability": f"{p.major}.{p.minor}",
            "sm_count": p.multi_processor_count,
            "memory_gib": round(p.total_memory / 2**30, 1),
            "l2_mib": round(l2 / 2**20, 1) if l2 else None,
            "driver": driver,
        }
    return {
        "device": device.type,
        "hostname": socket.gethostname(),
        "cpu": environment.cpu_model(),
        "cpu_count": os.cpu_count() or 1,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
    }


def versions() -> dict:
    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": np.__version__,
        "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None,
    }
    try:
        import triton  # OpenAI Triton, torch.compile's GPU code generator

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    return out


# ------------------------------------------------------------------------------ output


def _csv(kind):
    def parse(text: str):
        return [kind(v) for v in text.split(",") if v.strip()]

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reduced", action="store_true", help="tiny sizes and iteration counts (CI, CPU)")
    p.add_argument("--models", type=_csv(str), default=list(MODELS), help=f"comma list (default {','.join(MODELS)})")
    p.add_argument("--batches", type=_csv(int), help="comma list overriding the profile's batches")
    p.add_argument("--variants", type=_csv(str), help=f"comma list of {','.join(VARIANTS)}")
    p.add_argument("--artifacts", type=Path, help="use <artifacts>/checkpoints/*.pt where present")
    p.add_argument("--out", type=Path, default=Path("perf/results/gpu_probe.json"), help="JSON output")
    p.add_argument("--threads", type=int, help="torch CPU threads (default 1 with --reduced, else up to 4)")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="time torch.compile (default: on for cuda, off for --reduced)",
    )
    p.add_argument("--compile-mode", default="default", help="torch.compile mode (default, reduce-overhead, ...)")
    p.add_argument("--compile-models", type=_csv(str), default=["nhits", "reservoir", "similarity"])
    p.add_argument("--compile-batches", type=_csv(int), default=[1, 64])
    p.add_argument("--compile-budget-s", type=float, default=150.0, help="stop compiling after this many seconds")
    p.add_argument("--deadline-s", type=float, default=480.0, help="skip what is left after this many seconds")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("CUDA is not available to this torch: use --device cpu --reduced here, --device cuda on a GPU machine")
    for kind, given, known in (("model", args.models, MODELS), ("variant", args.variants or (), VARIANTS)):
        if bad := [v for v in given if v not in known]:
            p.error(f"unknown {kind}(s) {bad}: expected some of {', '.join(known)}")
    if args.batches and min(args.batches) < 1:
        p.error("batches must be >= 1")
    if args.artifacts is not None and not args.artifacts.is_dir():
        p.error(f"artifacts directory {args.artifacts} does not exist")
    if args.compile is None:
        args.compile = args.device == "cuda" and not args.reduced
    if args.threads is None:  # one thread: OpenMP barriers stall badly on shared, oversubscribed CI cores
        args.threads = 1 if args.reduced else min(4, os.cpu_count() or 1)
    return args


def run_probe(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    device = torch.device(args.device)
    torch.set_num_threads(max(1, args.threads))
    prof = REDUCED if args.reduced else FULL
    probe = Probe(args, prof, device)
    log.info("measuring ceilings on %s", device)
    probe.ceilings = c = measure_ceilings(device, prof)
    tf = c["matmul_tflops"]
    log.info(
        "ceilings: copy %.1f GB/s; matmul %d^3 fp32 %.2f / fp16 %.2f / bf16 %.2f TFLOP/s",
        *(c["copy_gbps"], c["matmul_size"], tf["fp32"], tf["fp16"], tf["bf16"]),
    )
    results = probe.run()
    doc = {
        "schema_version": schema.SCHEMA_VERSION,
        "kind": "gpu_probe",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m perf.gpu_probe", *sys.argv[1:]]),
        "mode": "reduced" if args.reduced else "full",
        "machine": machine(device),
        "versions": versions(),
        "weights": probe.sources,
        "sizes": {
            "n_items": prof.n_items,
            "n_users": prof.n_users,
            "embed_dim": spec.EMBED_DIM,
            "top_k": spec.TOP_K,
            "input_size": spec.INPUT_SIZE,
            "horizon": spec.HORIZON,
            "reservoir_units": int(probe.reservoir_units()),
        },
        "settings": {
            "budget_s": prof.budget_s,
            "min_iters": prof.min_iters,
            "max_iters": prof.max_iters,
            "input_sets": prof.n_sets,
            "compile": args.compile,
            "compile_mode": args.compile_mode,
            "fp32_matmul": "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee",
            "latency": "per call, device synchronised after each call",
            "throughput": "items/s of back-to-back calls, synchronised once",
            "reference": "float64 on CPU, first input set",
        },
        "ceilings": probe.ceilings,
        "kernels_per_call": probe.kernels,
        "results": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    schema.validate(doc, schema.PROBE_SCHEMA)
    return doc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    doc = run_probe(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    skipped = sum(r["status"] == "skipped" for r in doc["results"])
    print(f"{len(doc['results'])} rows ({skipped} skipped) in {doc['seconds']:.1f} s; wrote {args.out}")
    failed = [r for r in doc["results"] if r["status"] == "failed" and r["mode"] == "eager"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
