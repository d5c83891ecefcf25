"""Scenario files (perf/scenarios/*.yaml): what `make perf` measures per model and ensemble.

A scenario names a model, the kind of real input data its requests carry (perf/inputs.py) and runs; each
run expands to perf_analyzer points, one per concurrency (closed loop) or request rate (Poisson arrivals;
`request_rate_of_peak`: fractions of the first run's peak), per client batch size (`batch_size`). A run may
measure another model with its own `input_data`. Optional: `batching_off: {concurrency: [...]}` (again on a
server without dynamic_batching), `baselines: [eager, ort]`, `variants` (models served from a config copy,
e.g. the cached recommend), `compare` (stream vs windowed runs), `measurement`, `lanes` (a critical client
under a flood, with and without priority lanes: perf/trading.py) and `client_ticks` (one sequence through
clients.stream.StreamClient, streamed and unary).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from models import spec
from perf.inputs import KINDS, TENSORS
from perf.perf_analyzer import Measurement, Point

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
RUN_KEYS = set(
    "name model protocol concurrency request_rate request_rate_of_peak batch_size shared_memory async "
    "sequence_length sequence_id_range input_data streaming".split()
)
BASELINES = ("eager", "ort", "sentence_transformers", "search_loops")
QUICK_KEEP = 16  # the concurrency of the dynamic-batching comparison survives the quick profile


@dataclass
class Scenario:
    name: str  # file stem
    model: str
    input_data: dict
    runs: list[dict]
    about: str = ""
    batching_off: dict | None = None
    baselines: list[str] = field(default_factory=list)
    variants: dict = field(default_factory=dict)
    compare: dict | None = None
    lanes: dict | None = None
    client_ticks: dict | None = None
    measurement: Measurement = field(default_factory=Measurement)
    path: Path | None = None

    def run_model(self, run: dict) -> str:
        return run.get("model", self.model)

    def run_input(self, run: dict) -> dict:
        return run.get("input_data", self.input_data)

    def base_model(self, model: str) -> str:
        """The spec model a (variant) model name is served from."""
        return self.variants.get(model, {}).get("of", model)


TOP_KEYS = {f.name for f in fields(Scenario)} - {"name", "path"}


def load(path: Path) -> Scenario:
    body = yaml.safe_load(Path(path).read_text())
    if not isinstance(body, dict):
        raise ValueError(f"{path}: a scenario is a mapping, got {type(body).__name__}")
    if unknown := set(body) - TOP_KEYS:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} (known: {sorted(TOP_KEYS)})")
    if missing := [key for key in ("model", "input_data", "runs") if key not in body]:
        raise ValueError(f"{path}: `{missing[0]}` is required")
    body["measurement"] = Measurement(**body.get("measurement", {}))
    body["baselines"], body["variants"] = list(body.get("baselines", [])), body.get("variants") or {}
    return Scenario(name=Path(path).stem, path=Path(path), **body)


def load_all(directory: Path = SCENARIO_DIR, models: set[str] | None = None) -> list[Scenario]:
    out = [load(p) for p in sorted(directory.glob("*.yaml"))]
    return [s for s in out if s.name in models or s.model in models] if models else out


def _as_list(v) -> list:
    return list(v) if isinstance(v, list | tuple) else [v]


def validate(s: Scenario, repo: Path = spec.MODEL_REPOSITORY) -> list[str]:
    """Problems with one scenario: unknown models, tensors the input data would not fill, bad run keys."""
    names = {r.get("name") for r in s.runs}
    checks = [
        (v.get("of") not in spec.MODELS, f"variant {k} is `of` an unknown model {v.get('of')!r}")
        for k, v in s.variants.items()
    ]
    checks += [(not s.runs, "no runs")]
    checks += [
        (True, f"run {r.get('name', i)!r}: {p}") for i, r in enumerate(s.runs) for p in _run_problems(s, i, r, repo)
    ]
    checks += [(s.compare and s.compare.get(k) not in names, f"compare.{k} names no run") for k in ("stream", "window")]
    checks += [(b not in BASELINES, f"baseline {b!r} is not one of {', '.join(BASELINES)}") for b in s.baselines]
    where = s.path.name if s.path else s.name
    return [f"{where}: {message}" for bad, message in checks if bad]


def _run_problems(s: Scenario, i: int, run: dict, repo: Path) -> list[str]:
    from common.triton import load_config

    unknown = set(run) - RUN_KEYS
    checks = [(unknown, f"unknown keys {sorted(unknown)}"), ("name" not in run, "`name` is required")]
    model = s.run_model(run)
    base, kind = s.base_model(model), s.run_input(run).get("kind")
    if base not in spec.MODELS or kind not in KINDS:
        why = (
            f"unknown model {model!r}" if base not in spec.MODELS else f"input_data kind {kind!r} is not one of {KINDS}"
        )
        return [message for bad, message in checks if bad] + [why]
    ms, fills, sequence = spec.MODELS[base], set(TENSORS[kind]), base == spec.STREAM.name
    want = {t.name for t in ms.inputs}
    checks += [(fills != want, f"input_data {kind} fills {sorted(fills)}, {base} takes {sorted(want)}")]
    for rel in ("config.pbtxt", "configs/cpu.pbtxt"):  # the committed configs take the same tensors
        if (repo / base / rel).is_file():
            names = [t.name for t in load_config(repo / base / rel).input]
            checks += [
                (fills != set(names), f"{base}/{rel} inputs {names} are not what {kind} fills {list(TENSORS[kind])}")
            ]
    has_c, has_r = "concurrency" in run, ("request_rate" in run or "request_rate_of_peak" in run)
    checks += [
        (run.get("protocol", "grpc") not in ("grpc", "http"), "protocol must be grpc or http"),
        (has_c == has_r, "give exactly one of concurrency or request_rate(_of_peak)"),
        (
            "request_rate_of_peak" in run and i == 0,
            "the first run is the sweep the others refer to; it cannot be a fraction of it",
        ),
        (sequence != (kind == "tick_streams"), f"tick_streams input is for the sequence model {spec.STREAM.name} only"),
        ("sequence_length" in run and not sequence, f"sequence_length only applies to {spec.STREAM.name}"),
        (run.get("streaming") and run.get("protocol", "grpc") != "grpc", "streaming needs protocol grpc"),
        (run.get("shared_memory", "none") not in ("none", "system"), "shared_memory must be none or system"),
    ]
    checks += [
        (not 1 <= int(b) <= ms.max_batch_size, f"batch_size {b} outside [1, {ms.max_batch_size}]")
        for b in _as_list(run.get("batch_size", 1))
    ]
    return [message for bad, message in checks if bad]


def quick(values: list, keep: int = 2) -> list:
    """First and last of a list, plus 16 where present (the quick profile of tests and `make perf-small`)."""
    values = list(values)
    if len(values) <= keep:
        return values
    picked = [values[0], values[-1]][:keep]
    if keep > 1 and QUICK_KEEP in values:
        picked.append(QUICK_KEEP)
    return sorted(set(picked), key=values.index)


def points(
    s: Scenario,
    run: dict,
    input_file: Path,
    measurement: Measurement,
    peak: float | None = None,
    is_quick: bool = False,
) -> list[Point]:
    """perf_analyzer points of one run; `peak` is the sweep's peak throughput for request_rate_of_peak runs."""
    common = {
        "model": s.run_model(run),
        "label": f"{s.name}.{run['name']}",
        "protocol": run.get("protocol", "grpc"),
        "input_data": str(input_file),
        "shared_memory": run.get("shared_memory", "none"),
        "async_mode": bool(run.get("async", False)),
        "streaming": bool(run.get("streaming", False)),
        "sequence_length": run.get("sequence_length"),
        "sequence_id_range": tuple(run["sequence_id_range"]) if "sequence_id_range" in run else None,
        "measurement": measurement,
    }
    batches = [int(b) for b in _as_list(run.get("batch_size", 1))]
    sizes = quick(batches, 1) if is_quick else batches
    if "concurrency" in run:
        values = [int(c) for c in _as_list(run["concurrency"])]
        return [
            Point(concurrency=c, batch_size=b, **common) for b in sizes for c in (quick(values) if is_quick else values)
        ]
    if "request_rate" in run:
        rates = [float(r) for r in _as_list(run["request_rate"])]
    elif peak:
        rates = [round(f * peak / max(batches), 1) for f in _as_list(run["request_rate_of_peak"])]
    else:
        return []
    rates = [r for r in rates if r > 0]
    rates = rates[len(rates) // 2 : len(rates) // 2 + 1] if is_quick else rates
    return [Point(request_rate=r, batch_size=b, **common) for b in sizes for r in rates]
