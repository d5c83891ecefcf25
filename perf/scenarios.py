"""Scenario files (perf/scenarios/*.yaml): what `make perf` measures per model and ensemble.

A scenario names a model, the kind of real input data its requests carry (perf/inputs.py) and a list
of runs. Each run expands to perf_analyzer points:

    runs:
      - name: sweep                         # the first run: knee, chosen point, plots
        protocol: grpc                      # grpc | http
        concurrency: [1, 2, 4, 8, 16, 32]   # one point per value (closed loop)
      - name: rate
        request_rate_of_peak: [0.25, 0.9]   # open loop (Poisson arrivals) at fractions of the sweep's peak
      - name: batch
        batch_size: [8, 64]                 # client-side batch (-b)
        concurrency: [2]
      - name: shm
        shared_memory: system               # perf_analyzer's system shared memory for inputs and outputs
        concurrency: [8]
      - name: windowed
        model: reservoir                    # a run may measure another model (with its own input_data)
        input_data: {kind: windows, n: 512}

Optional top-level keys: `batching_off: {concurrency: [...]}` (measured again on a server whose
configs have no dynamic_batching), `baselines: [eager, ort]`, `variants` (extra models served from a
config copy, e.g. the cached recommend), `compare` (stream vs windowed runs), `measurement`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from models import spec
from perf.analyzer import Measurement, Point
from perf.inputs import KINDS, TENSORS

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
RUN_KEYS = {
    "name",
    "model",
    "protocol",
    "concurrency",
    "request_rate",
    "request_rate_of_peak",
    "batch_size",
    "shared_memory",
    "async",
    "sequence_length",
    "sequence_id_range",
    "input_data",
}
TOP_KEYS = {"model", "about", "input_data", "runs", "batching_off", "baselines", "variants", "compare", "measurement"}


@dataclass
class Scenario:
    name: str  # file stem
    model: str
    about: str
    input_data: dict
    runs: list[dict]
    batching_off: dict | None = None
    baselines: list[str] = field(default_factory=list)
    variants: dict = field(default_factory=dict)
    compare: dict | None = None
    measurement: Measurement = field(default_factory=Measurement)
    path: Path | None = None

    @property
    def primary(self) -> dict:
        return self.runs[0]

    def run_model(self, run: dict) -> str:
        return run.get("model", self.model)

    def run_input(self, run: dict) -> dict:
        return run.get("input_data", self.input_data)

    def base_model(self, model: str) -> str:
        """The spec model a (variant) model name is served from."""
        return self.variants.get(model, {}).get("of", model)


def load(path: Path) -> Scenario:
    body = yaml.safe_load(Path(path).read_text())
    if not isinstance(body, dict):
        raise ValueError(f"{path}: a scenario is a mapping, got {type(body).__name__}")
    unknown = set(body) - TOP_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} (known: {sorted(TOP_KEYS)})")
    for key in ("model", "input_data", "runs"):
        if key not in body:
            raise ValueError(f"{path}: `{key}` is required")
    return Scenario(
        name=Path(path).stem,
        model=body["model"],
        about=body.get("about", ""),
        input_data=body["input_data"],
        runs=body["runs"],
        batching_off=body.get("batching_off"),
        baselines=list(body.get("baselines", [])),
        variants=body.get("variants", {}) or {},
        compare=body.get("compare"),
        measurement=Measurement(**body.get("measurement", {})),
        path=Path(path),
    )


def load_all(directory: Path = SCENARIO_DIR, models: set[str] | None = None) -> list[Scenario]:
    out = [load(p) for p in sorted(directory.glob("*.yaml"))]
    if models:
        out = [s for s in out if s.name in models or s.model in models]
    return out


def _as_list(v) -> list:
    return list(v) if isinstance(v, list | tuple) else [v]


def config_inputs(repo: Path, model: str) -> dict[str, list[str]]:
    """{config file: input tensor names} of a model's configs in `repo` (committed configs suffice)."""
    from serving.repository import load_config

    out = {}
    for rel in ("config.pbtxt", "configs/cpu.pbtxt"):
        path = repo / model / rel
        if path.is_file():
            out[rel] = [t.name for t in load_config(path).input]
    return out


def validate(s: Scenario, repo: Path = spec.MODEL_REPOSITORY) -> list[str]:
    """Problems with one scenario: unknown models, tensors the input data would not fill, bad run keys."""
    problems = []
    where = s.path.name if s.path else s.name
    for variant, v in s.variants.items():
        if v.get("of") not in spec.MODELS:
            problems.append(f"{where}: variant {variant} is `of` an unknown model {v.get('of')!r}")
    if not s.runs:
        problems.append(f"{where}: no runs")
    for i, run in enumerate(s.runs):
        tag = f"{where}: run {run.get('name', i)!r}"
        unknown = set(run) - RUN_KEYS
        if unknown:
            problems.append(f"{tag}: unknown keys {sorted(unknown)}")
        if "name" not in run:
            problems.append(f"{tag}: `name` is required")
        model = s.run_model(run)
        base = s.base_model(model)
        if base not in spec.MODELS:
            problems.append(f"{tag}: unknown model {model!r}")
            continue
        ms = spec.MODELS[base]
        kind = s.run_input(run).get("kind")
        if kind not in KINDS:
            problems.append(f"{tag}: input_data kind {kind!r} is not one of {KINDS}")
            continue
        want = {t.name for t in ms.inputs}
        if set(TENSORS[kind]) != want:
            problems.append(f"{tag}: input_data {kind} fills {sorted(TENSORS[kind])}, {base} takes {sorted(want)}")
        for rel, names in config_inputs(repo, base).items():
            if set(TENSORS[kind]) != set(names):
                problems.append(f"{tag}: {base}/{rel} inputs {names} are not what {kind} fills {list(TENSORS[kind])}")
        if run.get("protocol", "grpc") not in ("grpc", "http"):
            problems.append(f"{tag}: protocol must be grpc or http")
        has_c, has_r = "concurrency" in run, ("request_rate" in run or "request_rate_of_peak" in run)
        if has_c == has_r:
            problems.append(f"{tag}: give exactly one of concurrency or request_rate(_of_peak)")
        if "request_rate_of_peak" in run and i == 0:
            problems.append(f"{tag}: the first run is the sweep the others refer to; it cannot be a fraction of it")
        for b in _as_list(run.get("batch_size", 1)):
            if not 1 <= int(b) <= ms.max_batch_size:
                problems.append(f"{tag}: batch_size {b} outside [1, {ms.max_batch_size}]")
        sequence = base == spec.STREAM.name
        if sequence != (kind == "tick_streams"):
            problems.append(f"{tag}: tick_streams input is for the sequence model {spec.STREAM.name} only")
        if "sequence_length" in run and not sequence:
            problems.append(f"{tag}: sequence_length only applies to {spec.STREAM.name}")
        if run.get("shared_memory", "none") not in ("none", "system"):
            problems.append(f"{tag}: shared_memory must be none or system")
    if s.compare:
        names = {r.get("name") for r in s.runs}
        for key in ("stream", "window"):
            if s.compare.get(key) not in names:
                problems.append(f"{where}: compare.{key} names no run")
    for b in s.baselines:
        if b not in BASELINES:
            problems.append(f"{where}: baseline {b!r} is not one of {', '.join(BASELINES)}")
    return problems


BASELINES = ("eager", "ort", "sentence_transformers")
QUICK_KEEP = 16  # the concurrency of the dynamic-batching comparison survives the quick profile


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
    label = f"{s.name}.{run['name']}"
    common = {
        "model": s.run_model(run),
        "label": label,
        "protocol": run.get("protocol", "grpc"),
        "input_data": str(input_file),
        "shared_memory": run.get("shared_memory", "none"),
        "async_mode": bool(run.get("async", False)),
        "sequence_length": run.get("sequence_length"),
        "sequence_id_range": tuple(run["sequence_id_range"]) if "sequence_id_range" in run else None,
        "measurement": measurement,
    }
    batches = [int(b) for b in _as_list(run.get("batch_size", 1))]
    out = []
    if "concurrency" in run:
        values = [int(c) for c in _as_list(run["concurrency"])]
        values = quick(values) if is_quick else values
        for b in quick(batches, 1) if is_quick else batches:
            out += [Point(concurrency=c, batch_size=b, **common) for c in values]
    else:
        if "request_rate" in run:
            rates = [float(r) for r in _as_list(run["request_rate"])]
        else:
            if not peak:
                return []
            rates = [round(f * peak / max(batches), 1) for f in _as_list(run["request_rate_of_peak"])]
        rates = [r for r in rates if r > 0]
        rates = rates[len(rates) // 2 : len(rates) // 2 + 1] if is_quick and rates else rates
        for b in quick(batches, 1) if is_quick else batches:
            out += [Point(request_rate=r, batch_size=b, **common) for r in rates]
    return out
