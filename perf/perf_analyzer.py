"""perf_analyzer 2.51.0 (from the tritonclient wheel): run one measurement point, parse its CSV.

`run_point` writes the raw CSV (`-f ... --verbose-csv`) and a JSON record beside it: the command with the
admin key redacted, the parsed row, the server-side batch statistics, stdout.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

log = logging.getLogger(__name__)

UNSTABLE = ("Failed to obtain stable measurement", "No valid requests recorded")  # retried with laxer settings
REDACTED = "<admin-key>"
# perf_analyzer CSV columns (microseconds) -> our names
BREAKDOWN = {
    "Client Send": "client_send",
    "Network+Server Send/Recv": "network",
    "Server Queue": "queue",
    "Server Compute Input": "compute_input",
    "Server Compute Infer": "compute_infer",
    "Server Compute Output": "compute_output",
    "Client Recv": "client_recv",
}
# our name -> Triton's inference_stats entry and unit
STATS = {
    "cache_hits": ("cache_hit", "count"),
    "queue_ns": ("queue", "ns"),
    "compute_input_ns": ("compute_input", "ns"),
    "compute_infer_ns": ("compute_infer", "ns"),
    "compute_output_ns": ("compute_output", "ns"),
    "success_count": ("success", "count"),
}


class AnalyzerError(RuntimeError):
    """perf_analyzer cannot run or a measurement failed."""


@dataclass(frozen=True)
class Measurement:
    interval_ms: int = 1000  # one measurement window
    stability: int = 50  # % spread allowed between the last 3 windows (the 2 shared cores are noisy)
    max_trials: int = 4  # windows before perf_analyzer gives up on stability; then one retry that accepts any 3


@dataclass
class Point:
    """One perf_analyzer invocation at one concurrency or one request rate."""

    model: str
    label: str  # scenario/run name, used in file names
    protocol: str = "grpc"
    concurrency: int | None = None
    request_rate: float | None = None
    batch_size: int = 1
    input_data: str | None = None  # perf_analyzer --input-data JSON file
    shared_memory: str = "none"
    async_mode: bool = False
    streaming: bool = False  # gRPC bidirectional streaming (perf_analyzer --streaming)
    sequence_length: int | None = None
    sequence_id_range: tuple[int, int] | None = None
    measurement: Measurement = field(default_factory=Measurement)

    @property
    def stem(self) -> str:
        x = f"r{self.request_rate:g}" if self.request_rate is not None else f"c{self.concurrency}"
        return f"{self.label}-{self.protocol}-b{self.batch_size}-{x}"


def binary() -> list[str]:
    """The perf_analyzer command: $PERF_ANALYZER where set (e.g. `docker run ... <NGC SDK image> perf_analyzer`,
    docs/gpu.md), else the one of the tritonclient wheel."""
    if command := os.environ.get("PERF_ANALYZER"):
        return shlex.split(command)
    found = Path(sys.executable).parent / "perf_analyzer"
    if found.is_file():
        return [str(found)]
    if other := shutil.which("perf_analyzer"):
        return [other]
    raise AnalyzerError("perf_analyzer is not installed: `pip install tritonclient[all]==2.51.0` ships it")


def cuda_runtime_dir() -> Path | None:
    """The lib folder of the nvidia-cuda-runtime-cu12 wheel (perf_analyzer links libcudart.so.12)."""
    try:
        import nvidia.cuda_runtime as cr
    except ImportError:
        return None
    return next((Path(r) / "lib" for r in cr.__path__ if (Path(r) / "lib" / "libcudart.so.12").exists()), None)


def environment() -> dict[str, str]:
    env = dict(os.environ)
    if (lib := cuda_runtime_dir()) is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def version() -> str:
    """'2.51.0', or AnalyzerError naming the missing library and how to install it."""
    try:
        out = subprocess.run([*binary(), "--version"], env=environment(), capture_output=True, text=True, timeout=30)
    except OSError as exc:
        raise AnalyzerError(f"cannot run perf_analyzer: {exc}") from exc
    text = out.stdout + out.stderr
    if "libb64" in text:
        raise AnalyzerError(
            "perf_analyzer needs Debian's libb64-0d: `apt-get install libb64-0d` (or `make system-deps`)"
        )
    if "libcudart" in text:
        raise AnalyzerError("perf_analyzer needs libcudart.so.12: `pip install nvidia-cuda-runtime-cu12==12.6.77`")
    for line in text.splitlines():
        if line.startswith("Perf Analyzer Version"):
            return line.split()[3]
    raise AnalyzerError(f"perf_analyzer --version said: {text.strip()[:300]}")


def _contents(point: Point) -> list[str]:
    """What the requests of a point carry: its measurement and its warm-up send the same."""
    out = ["--input-data", str(point.input_data)] if point.input_data else []
    return out + (["--sequence-length", str(point.sequence_length)] if point.sequence_length else [])


def command(point: Point, url: str, csv_path: Path, key: str | None = None, stability: int | None = None) -> list[str]:
    """perf_analyzer's arguments (after the binary) for one point."""
    m, stability = point.measurement, stability if stability is not None else point.measurement.stability
    cmd = f"-m {point.model} -u {url} -i {point.protocol} -b {point.batch_size} --measurement-interval "
    cmd += f"{m.interval_ms} --stability-percentage {stability} --max-trials {m.max_trials}"
    cmd = [*cmd.split(), "-f", str(csv_path), "--verbose-csv"]
    if point.request_rate is not None:
        cmd += ["--request-rate-range", f"{point.request_rate:g}", "--request-distribution", "poisson"]
    elif point.concurrency is not None:
        cmd += ["--concurrency-range", str(point.concurrency)]
    else:
        raise AnalyzerError(f"{point.stem}: a point needs a concurrency or a request rate")
    cmd += (["--async"] if point.async_mode else []) + (["--streaming"] if point.streaming else []) + _contents(point)
    if point.sequence_id_range:
        cmd += ["--sequence-id-range", "{}:{}".format(*point.sequence_id_range)]
    if point.shared_memory != "none":
        from common.triton import admin_headers

        if not key:
            raise AnalyzerError("shared memory needs the server's admin key (the shared-memory API is restricted)")
        ((name, value),) = admin_headers(key, point.protocol).items()
        cmd += ["--shared-memory", point.shared_memory, "-H", f"{name}:{value}"]
    return cmd


def redact(cmd: list[str]) -> list[str]:
    return [f"{a.split(':', 1)[0]}:{REDACTED}" if i and cmd[i - 1] == "-H" else a for i, a in enumerate(cmd)]


def _ms(row: dict, col: str) -> float | None:
    return float(row[col]) / 1000.0 if row.get(col) else None


def parse_csv(path: Path) -> list[dict]:
    """Rows of a perf_analyzer `-f` CSV as {mode, x, throughput, p50_ms ... p99_ms, avg_ms, breakdown_us}."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        x = next((col for col in ("Concurrency", "Request Rate") if col in row), None)
        if x is None:
            raise AnalyzerError(f"{path}: neither a Concurrency nor a Request Rate column: {list(row)}")
        out.append(
            {"mode": x.lower().replace(" ", "_"), "x": float(row[x]), "throughput": float(row["Inferences/Second"])}
            | {f"{p}_ms": _ms(row, f"{p} latency") for p in ("p50", "p90", "p95", "p99")}
            | {"avg_ms": _ms(row, "Avg latency")}
            | {"breakdown_us": {ours: float(row[col]) for col, ours in BREAKDOWN.items() if row.get(col)}}
        )
    return out


def model_stats(http_url: str, model: str) -> dict[str, int]:
    """Cumulative counters of one model from Triton's statistics extension."""
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=10) as r:
        s = json.load(r)["model_stats"][0]
    inf = s.get("inference_stats", {})
    out = {k: int(s.get(k, 0)) for k in ("inference_count", "execution_count")}
    return out | {name: int(inf.get(stat, {}).get(unit, 0)) for name, (stat, unit) in STATS.items()}


def stats_delta(before: dict, after: dict) -> dict:
    d = {k: after[k] - before[k] for k in before}
    d["avg_batch"] = d["inference_count"] / d["execution_count"] if d["execution_count"] else None
    return d


def warmup(point: Point, urls: dict[str, str], requests: int = 64) -> None:
    """Unrecorded requests before a model's first point: the first executions of a freshly loaded model
    (ONNX Runtime allocations, python backend start-up) are slow and would land in the first window."""
    cmd = f"-m {point.model} -u {urls[point.protocol]} -i {point.protocol} --concurrency-range 1 --request-count"
    cmd = [*binary(), *cmd.split(), str(requests), *_contents(point)]
    try:
        proc = subprocess.run(cmd, env=environment(), capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        log.warning("%s: warm-up ran past 300 s", point.model)
        return
    if proc.returncode != 0:
        log.warning("%s: warm-up failed: %s", point.model, (proc.stdout + proc.stderr).strip()[-300:])


def run_point(
    point: Point, urls: dict[str, str], out_dir: Path, *, key: str | None = None, stats_models: tuple[str, ...] = ()
) -> dict:
    """Run perf_analyzer once; write <stem>.csv and <stem>.json under out_dir; return the JSON record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"{point.stem}.csv"
    models = stats_models or (point.model,)
    before = {m: model_stats(urls["http"], m) for m in models}
    m = point.measurement
    limit = 120 + (m.max_trials + 4) * m.interval_ms / 1000.0 * 3 * 3
    stable, t0 = True, time.monotonic()
    # 1: the stated stability check; 2: accept any 3 windows; 3: the same with 3x longer windows (a window
    # that holds one or no request, e.g. a slow model during a load spike, never passes perf_analyzer's check)
    longer = replace(point, measurement=replace(m, interval_ms=3 * m.interval_ms))
    attempts = ((point, None), (point, 1000), (longer, 1000))
    for attempt, (p, stability) in enumerate(attempts, 1):
        cmd = [*binary(), *command(p, urls[point.protocol], csv_path, key, stability)]
        csv_path.unlink(missing_ok=True)
        try:
            proc = subprocess.run(cmd, env=environment(), capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired as exc:
            raise AnalyzerError(f"{point.stem}: perf_analyzer ran past {limit:.0f} s") from exc
        text = proc.stdout + proc.stderr
        if proc.returncode == 0 and csv_path.is_file():
            break
        if not any(u in text for u in UNSTABLE) or attempt == len(attempts):
            raise AnalyzerError(f"{point.stem}: perf_analyzer exited {proc.returncode}: {text.strip()[-1500:]}")
        log.info(
            "%s: no stable measurement (attempt %d); measuring again, accepting any 3 windows", point.stem, attempt
        )
        stable = False
    row = parse_csv(csv_path)[0]
    record = {
        "point": asdict(point),
        "stable": stable,
        "command": redact(cmd),
        "seconds": round(time.monotonic() - t0, 2),
        "row": row,
        "server": {mm: stats_delta(before[mm], model_stats(urls["http"], mm)) for mm in models},
        "loadavg_1min": round(os.getloadavg()[0], 2),  # other work on the shared cores, at the end
        "stdout_tail": "\n".join(proc.stdout.strip().splitlines()[-25:]),
    }
    (out_dir / f"{point.stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    batch = record["server"][point.model]["avg_batch"]
    log.info(
        "%-40s %9.1f infer/s  p50 %7.2f ms  p99 %7.2f ms  avg batch %s",
        point.stem,
        row["throughput"],
        row["p50_ms"] or float("nan"),
        row["p99_ms"] or float("nan"),
        f"{batch:.1f}" if batch else "-",
    )
    return record
