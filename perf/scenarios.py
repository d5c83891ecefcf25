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
RUN_KEYS = set(
    "name model protocol concurrency request_rate request_rate_of_peak batch_size shared_memory async "
    "sequence_length sequence_id_range input_data".split()
)
TOP_KEYS = {"model", "about", "input_data", "runs", "batching_off", "baselines", "variants", "compare", "measurement"}


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
    measurement: Measurement = field(default_factory=Measurement)
    path: Path | None = None

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
    if unknown := set(body) - TOP_KEYS:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} (known: {sorted(TOP_KEYS)})")
    if missing := [key for key in ("model", "input_data", "runs") if key not in body]:
        raise ValueError(f"{path}: `{missing[0]}` is required")
    body["measurement"] = Measurement(**body.get("measurement", {}))
    body["baselines"], body["variants"] = list(body.get("baselines", [])), body.get("variants") or {}
    return Scenario(name=Path(path).stem, path=Path(path), **body)


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
    where = s.path.name if s.path else s.name
    problems = [
        f"{where}: variant {variant} is `of` an unknown model {v.get('of')!r}"
        for variant, v in s.variants.items()
        if v.get("of") not in spec.MODELS
    ]
    problems += [f"{where}: no runs"] if not s.runs else []
    for i, run in enumerate(s.runs):
        problems += [f"{where}: run {run.get('name', i)!r}: {p}" for p in _run_problems(s, i, run, repo)]
    names = {r.get("name") for r in s.runs}
    problems += [
        f"{where}: compare.{k} names no run"
        for k in ("stream", "window")
        if s.compare and s.compare.get(k) not in names
    ]
    return problems + [
        f"{where}: baseline {b!r} is not one of {', '.join(BASELINES)}" for b in s.baselines if b not in BASELINES
    ]


def _run_problems(s: Scenario, i: int, run: dict, repo: Path) -> list[str]:
    unknown = set(run) - RUN_KEYS
    out = ([f"unknown keys {sorted(unknown)}"] if unknown else []) + (
        ["`name` is required"] if "name" not in run else []
    )
    model = s.run_model(run)
    base, kind = s.base_model(model), s.run_input(run).get("kind")
    if base not in spec.MODELS:
        return out + [f"unknown model {model!r}"]
    if kind not in KINDS:
        return out + [f"input_data kind {kind!r} is not one of {KINDS}"]
    ms, fills, sequence = spec.MODELS[base], set(TENSORS[kind]), base == spec.STREAM.name
    want = {t.name for t in ms.inputs}
    checks = [(fills != want, f"input_data {kind} fills {sorted(fills)}, {base} takes {sorted(want)}")]
    checks += [
        (fills != set(names), f"{base}/{rel} inputs {names} are not what {kind} fills {list(TENSORS[kind])}")
        for rel, names in config_inputs(repo, base).items()
    ]
    has_c, has_r = "concurrency" in run, ("request_rate" in run or "request_rate_of_peak" in run)
    checks += [
        (run.get("protocol", "grpc") not in ("grpc", "http"), "protocol must be grpc or http"),
        (has_c == has_r, "give exactly one of concurrency or request_rate(_of_peak)"),
        (
            "request_rate_of_peak" in run and i == 0,
            "the first run is the sweep the others refer to; it cannot be a fraction of it",
        ),
    ]
    checks += [
        (not 1 <= int(b) <= ms.max_batch_size, f"batch_size {b} outside [1, {ms.max_batch_size}]")
        for b in _as_list(run.get("batch_size", 1))
    ]
    checks += [
        (sequence != (kind == "tick_streams"), f"tick_streams input is for the sequence model {spec.STREAM.name} only"),
        ("sequence_length" in run and not sequence, f"sequence_length only applies to {spec.STREAM.name}"),
        (run.get("shared_memory", "none") not in ("none", "system"), "shared_memory must be none or system"),
    ]
    return out + [message for bad, message in checks if bad]


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
