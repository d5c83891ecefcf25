"""Check every TensorRT plan of a repository on the GPU that built it: trtexec loads and runs it, Polygraphy
compares it with ONNX Runtime on the file it was built from.

    python -m export.check_plans --repo model_repository [--models nhits,similarity] [--dry-run]

Runs in the TensorRT container (`make gpu-check`: `trtexec` on PATH, `polygraphy` in the venv). For each plan
that `make export TARGET=gpu` wrote, with the profile recorded in its provenance file:

1. `trtexec --loadEngine=<plan> --shapes=...` at the profile's opt batch: the plan deserialises on this GPU
   and its latency summary is printed.
2. `polygraphy run <onnx> --onnxrt` on random inputs of the same shape (the value ranges of `RANGES`, seed 1),
   saving inputs and outputs; then `polygraphy run <plan> --model-type engine --trt` on those inputs, compared
   with the saved outputs within the plan's tolerance (FP16 plan vs model.onnx: 1e-2; INT8 plan vs the Q/DQ
   model.int8.onnx it was built from: 5e-2).

Exit 1, naming each plan that failed, when any command fails; --dry-run prints the commands instead.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from common.cli import CliError, OneLineParser, require_dir, run_main, setup_logging
from common.files import read_json
from export import build_engine, graphs
from models import spec

log = logging.getLogger("export.check_plans")

PROG = "export.check_plans"
# trtexec of the NGC TensorRT container (/opt/tensorrt is linked as /usr/src/tensorrt)
TRTEXEC = shutil.which("trtexec") or "/usr/src/tensorrt/bin/trtexec"
TOLERANCE = {spec.PLAN_FP16: 1e-2, spec.PLAN_INT8: 5e-2}
SOURCE = {spec.PLAN_FP16: spec.ONNX_FP32, spec.PLAN_INT8: spec.ONNX_INT8}
# Polygraphy's random inputs: prices, unit vectors' components, valid ids, reservoir states (tanh-bounded).
RANGES = {
    "window": (50.0, 150.0),
    "nhits_forecast": (50.0, 150.0),
    "reservoir_forecast": (50.0, 150.0),
    "tick": (50.0, 150.0),
    "query": (-0.1, 0.1),
    "state_in": (-1.0, 1.0),
    "attention_mask": (1, 1),
}


def shapes(model: str, profile: dict) -> dict[str, tuple[int, ...]]:
    """Each input's shape at the profile's opt batch (and opt sequence length for a dynamic token axis)."""
    seq = profile.get("sequence", {}).get("opt")
    out = {
        t.name: (profile["opt"], *(seq if d == spec.SEQUENCE else d for d in t.dims)) for t in spec.MODELS[model].inputs
    }
    state = spec.MODELS[model].extra.get("state")
    if state is not None:
        out[graphs.STREAM_STATE_IN] = (profile["opt"], *state.dims)
    return out


def value_ranges(model: str) -> dict[str, tuple[float, float]]:
    ranges = {name: (lo, hi - 1) for name, (lo, hi) in spec.MODELS[model].extra.get("ranges", {}).items()}
    if model == "user_embedding":
        ranges["user_id"] = (0, 1000)
    return ranges | RANGES


def commands(model: str, plan: Path, work: Path) -> list[list[str]]:
    """trtexec and the two Polygraphy runs for one plan (see the module docstring)."""
    prov = read_json(build_engine.provenance_path(plan))
    dims = shapes(model, prov["profile"])
    trt_shapes = ",".join(f"{n}:{'x'.join(map(str, s))}" for n, s in dims.items())
    poly_shapes = [f"{n}:[{','.join(map(str, s))}]" for n, s in dims.items()]
    ranges = [f"{n}:[{lo},{hi}]" for n, (lo, hi) in value_ranges(model).items() if n in dims]
    onnx = plan.with_name(SOURCE[plan.name])
    tol = str(TOLERANCE[plan.name])
    inputs, outputs = work / f"{model}.{plan.stem}.inputs.json", work / f"{model}.{plan.stem}.onnxrt.json"
    return [
        [TRTEXEC, f"--loadEngine={plan}", f"--shapes={trt_shapes}", "--iterations=100", "--avgRuns=100"],
        [
            "polygraphy",
            "run",
            str(onnx),
            "--onnxrt",
            "--input-shapes",
            *poly_shapes,
            "--val-range",
            *ranges,
            "--seed",
            "1",
            "--save-inputs",
            str(inputs),
            "--save-outputs",
            str(outputs),
        ],  # fmt: skip
        [
            "polygraphy",
            "run",
            str(plan),
            "--model-type",
            "engine",
            "--trt",
            "--load-inputs",
            str(inputs),
            "--load-outputs",
            str(outputs),
            "--atol",
            tol,
            "--rtol",
            tol,
        ],  # fmt: skip
    ]


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, required=True, help="model repository holding <model>/1/model*.plan")
    p.add_argument("--models", help=f"comma-separated subset of {','.join(graphs.ALL_MODELS)} (default: all)")
    p.add_argument("--work", type=Path, default=Path("build/plan-check"), help="Polygraphy's inputs and outputs")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require_dir(args.repo, "model repository")
    setup_logging()
    plans = [
        (name, spec.version_dir(name, args.repo) / plan)
        for name in graphs.parse_models(args.models)
        for plan in (spec.PLAN_FP16, spec.PLAN_INT8)
    ]
    plans = [(n, p) for n, p in plans if p.is_file()]
    if not plans:
        raise CliError(f"no TensorRT plan under {args.repo}: build them first with `make docker-export`")
    args.work.mkdir(parents=True, exist_ok=True)
    failed = []
    for name, plan in plans:
        for cmd in commands(name, plan, args.work):
            print(shlex.join(cmd), flush=True)
            if not args.dry_run and subprocess.run(cmd).returncode != 0:
                failed.append(f"{plan} ({cmd[0]})")
                break
    if failed:
        raise CliError(f"{len(failed)} of {len(plans)} plans failed: {', '.join(failed)}")
    print(f"{len(plans)} plans {'listed' if args.dry_run else 'loaded and matched ONNX Runtime'}")
    return 0


if __name__ == "__main__":
    run_main(PROG, main)
