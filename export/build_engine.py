"""ONNX -> TensorRT plans: FP16 `model.plan` and INT8 `model.int8.plan` per model.

    python -m export.build_engine --artifacts artifacts --repo model_repository --target gpu [--models nhits]

Runs where TensorRT 11 imports and a GPU is visible (the TensorRT container of
`make export TARGET=gpu`, NGC 26.10: TensorRT 11.4). Elsewhere `--target cpu` prints one line saying the
plans were skipped and exits 0; `--target gpu` prints the same line and exits 1.

TensorRT 11 builds strongly typed networks only: the precision-enabling builder flags (BuilderFlag.FP16, INT8,
PREFER_PRECISION_CONSTRAINTS), implicit calibrators and per-layer precision requests are gone, and every tensor
runs in the type the ONNX file gives it (NVIDIA's "Migrating from TensorRT 10.x to 11.x"). So:

- FP16 plan from `model.onnx` converted to mixed FP16 / FP32 by ModelOpt AutoCast (`nvidia-modelopt[onnx]`,
  `convert_to_mixed_precision(..., low_precision_type="fp16", keep_io_types=True)`: the served tensors stay
  FP32, the nodes AutoCast finds sensitive stay FP32), written to `<artifacts>/tensorrt/<model>.fp16.onnx`.
- INT8 plan from `model.int8.onnx` as it is (explicit quantization: its Q/DQ nodes carry the scales and make
  those layers INT8; the rest runs in FP32, as typed). Where that file is an FP32 copy (no Q/DQ:
  forecast_blend, user_embedding) the INT8 plan is built like the FP16 one, and the provenance says so.
- One optimisation profile per plan: min batch 1, opt = the largest
  `preferred_batch_size` of `<repo>/<model>/config.pbtxt`, max = its `max_batch_size`; a dynamic per-sample
  dim (text_encoder's tokens) gets the (min, opt, max) of `models.spec` (`extra["sequence"]`: 1 / 32 / 256).
- Similarity: the GEMM, top-k and rerank nodes are excluded from AutoCast (they stay FP32): FP16 scores
  would reorder near-tied items of the top-k.
- A timing cache at `<artifacts>/tensorrt/tensorrt.timing.cache` is loaded before
  and saved after every build.
- Beside each plan, `<plan>.provenance.json`: TensorRT version, GPU name, compute
  capability, ONNX sha256, calibration manifest sha256. `check_plan_provenance()`
  compares it with what is installed, before Triton refuses a plan.

Compare TensorRT with ONNX Runtime on the same ONNX file (in the TensorRT container):

    polygraphy run artifacts/tensorrt/nhits.model.fp16.onnx --onnxrt --trt \\
        --trt-min-shapes window:[1,168] --trt-opt-shapes window:[256,168] --trt-max-shapes window:[1024,168] \\
        --input-shapes window:[64,168] --atol 1e-2 --rtol 1e-2
    polygraphy run model_repository/nhits/1/model.int8.onnx --onnxrt --trt \\
        --trt-min-shapes window:[1,168] --trt-opt-shapes window:[256,168] --trt-max-shapes window:[1024,168] \\
        --input-shapes window:[64,168] --atol 5e-2 --rtol 5e-2
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.cli import CliError, OneLineParser, require_dir, run_main, setup_logging
from common.files import sha256_file, write_json
from export import graphs
from models import spec

log = logging.getLogger("export.build_engine")

PROG = "export.build_engine"
WORKSPACE_BYTES = 4 << 30
PROVENANCE_SUFFIX = ".provenance.json"
TIMING_CACHE = "tensorrt.timing.cache"
FP32_NODE_PATTERNS = ("rerank/.*",)  # calibration's exact FP32 rerank of the INT8 shortlist (similarity)
FP32_OP_TYPES = ("MatMul", "Gemm", "TopK")  # scores up to the top-k, in a graph that ranks (similarity)
HINT = "build them in the TensorRT container with `make export TARGET=gpu`"


# ----------------------------------------------------------------------------- environment


def import_tensorrt() -> Any:
    """The tensorrt module, imported only when needed (this module must import without it)."""
    return importlib.import_module("tensorrt")


def import_autocast() -> Any:
    """ModelOpt AutoCast (pyproject's `gpu` extra), which makes the FP16 ONNX a strongly typed build needs."""
    return importlib.import_module("modelopt.onnx.autocast")


def gpu_info() -> dict[str, str] | None:
    """Name and compute capability of GPU 0 from nvidia-smi; None when no GPU is visible."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return None
    if not out:
        return None
    name, cap, driver = (f.strip() for f in out.splitlines()[0].split(","))
    return {"name": name, "compute_capability": cap, "driver": driver}


def unavailable_reason() -> str | None:
    """Why plans cannot be built here, or None when TensorRT and a GPU are both present."""
    try:
        import_tensorrt()
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install raising OSError
        return f"TensorRT is not importable ({type(e).__name__}: {e})"
    try:
        import_autocast()
    except Exception as e:  # noqa: BLE001
        return f"ModelOpt AutoCast is not importable ({type(e).__name__}: {e}; pip install -e '.[gpu]')"
    if gpu_info() is None:
        return "no GPU is visible (nvidia-smi found none)"
    return None


# ----------------------------------------------------------------------------- profiles


def batch_sizes(model: str, repo: Path) -> tuple[int, int, int]:
    """(min, opt, max) batch of the optimisation profile, from the model's Triton config (gpu target)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    max_batch = spec.MODELS[model].max_batch_size
    preferred: list[int] = []
    path = repo / model / "config.pbtxt"
    if path.is_file():
        cfg = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        max_batch = cfg.max_batch_size or max_batch
        preferred = list(cfg.dynamic_batching.preferred_batch_size)
        if cfg.HasField("sequence_batching"):
            strategy = cfg.sequence_batching.WhichOneof("strategy_choice")
            if strategy == "oldest":
                preferred += list(cfg.sequence_batching.oldest.preferred_batch_size)
    else:
        log.warning("%s: %s not found, profile from models.spec (max batch %d)", model, path, max_batch)
    opt = min(max(preferred), max_batch) if preferred else max_batch
    return 1, opt, max_batch


# ----------------------------------------------------------------------------- provenance


def provenance_path(plan: Path) -> Path:
    return plan.with_name(plan.name + PROVENANCE_SUFFIX)


def check_plan_provenance(plan_path: Path) -> list[str]:
    """Problems that would stop Triton loading `plan_path` here: a missing plan or provenance, another
    TensorRT version, another GPU architecture, or an ONNX file changed since the build. Empty: all fine."""
    plan_path = Path(plan_path)
    problems: list[str] = []
    if not plan_path.is_file():
        return [f"{plan_path} does not exist"]
    prov_path = provenance_path(plan_path)
    if not prov_path.is_file():
        return [f"{prov_path.name} is missing: provenance of {plan_path} unknown"]
    try:
        prov = json.loads(prov_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return [f"{prov_path} is unreadable: {e}"]
    built = prov.get("tensorrt_version", "?")
    try:
        installed = import_tensorrt().__version__
    except Exception as e:  # noqa: BLE001
        problems.append(f"TensorRT is not importable ({type(e).__name__}); cannot load a plan built with {built}")
    else:
        if installed != built:
            problems.append(f"plan built with TensorRT {built}, installed {installed}: rebuild the plan")
    gpu = gpu_info()
    if gpu is not None and prov.get("compute_capability") and gpu["compute_capability"] != prov["compute_capability"]:
        problems.append(
            f"plan built for compute capability {prov['compute_capability']} ({prov.get('gpu')}), "
            f"this GPU is {gpu['compute_capability']} ({gpu['name']})"
        )
    onnx_path = plan_path.with_name(prov.get("onnx", ""))
    if prov.get("onnx") and onnx_path.is_file() and sha256_file(onnx_path) != prov.get("onnx_sha256"):
        problems.append(f"{onnx_path.name} changed since the plan was built: rebuild the plan")
    if prov.get("plan_sha256") and sha256_file(plan_path) != prov["plan_sha256"]:
        problems.append(f"{plan_path.name} does not match the hash recorded at build time")
    return problems


# ----------------------------------------------------------------------------- building


def has_qdq(onnx_path: Path) -> bool:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)


class EngineBuilder:
    """Parses one ONNX file into a TensorRT network and serialises a plan from it."""

    def __init__(self, timing_cache: Path, workspace: int = WORKSPACE_BYTES, verbose: bool = False):
        self.trt = import_tensorrt()
        trt = self.trt
        self.logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self.logger, namespace="")
        self.builder = trt.Builder(self.logger)
        if self.builder is None:
            raise CliError("trt.Builder could not be created (no usable CUDA device?)")
        self.timing_cache = timing_cache
        self.workspace = workspace

    def parse(self, onnx_path: Path) -> tuple[Any, Any]:
        """(network, parser); logs every parser error and raises CliError when parsing fails."""
        network = self.builder.create_network(0)  # TensorRT 11: explicit batch and strong typing, always
        parser = self.trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            for i in range(parser.num_errors):
                log.error("%s: %s", onnx_path, parser.get_error(i))
            raise CliError(f"TensorRT could not parse {onnx_path} ({parser.num_errors} errors above)")
        for i in range(network.num_inputs):
            t = network.get_input(i)
            log.info("input  %-20s %-16s %s", t.name, tuple(t.shape), t.dtype)
        for i in range(network.num_outputs):
            t = network.get_output(i)
            log.info("output %-20s %-16s %s", t.name, tuple(t.shape), t.dtype)
        return network, parser

    def build(
        self,
        onnx_path: Path,
        plan_path: Path,
        batches: tuple[int, int, int],
        int8: bool,
        sequence: tuple[int, int, int] | None = None,
    ) -> dict[str, Any]:
        """Build `plan_path` from `onnx_path` as typed: the caller gives the FP16 (AutoCast) or Q/DQ file."""
        trt = self.trt
        network, _parser = self.parse(onnx_path)  # the parser must outlive the build
        config = self.builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace)
        cache_bytes = self.timing_cache.read_bytes() if self.timing_cache.is_file() else b""
        cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(cache, ignore_mismatch=False)

        profile = self.builder.create_optimization_profile()
        lo, opt, hi = batches
        for i in range(network.num_inputs):
            t = network.get_input(i)
            rest = tuple(t.shape)[1:]
            if any(d < 0 for d in rest) and sequence is None:
                raise CliError(f"{onnx_path}: input {t.name} has dynamic non-batch dims {tuple(t.shape)}")
            shapes = [
                (b, *(seq if d < 0 else d for d in rest))
                for b, seq in zip((lo, opt, hi), sequence or (0, 0, 0), strict=True)
            ]
            profile.set_shape(t.name, *shapes)
        config.add_optimization_profile(profile)

        t0 = time.perf_counter()
        serialized = self.builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - t0
        if serialized is None:
            raise CliError(f"TensorRT failed to build {plan_path} from {onnx_path} (see the TensorRT log above)")
        plan_path.write_bytes(serialized)
        self.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        self.timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
        log.info("%s: %d bytes in %.1fs", plan_path, plan_path.stat().st_size, seconds)
        prof: dict[str, Any] = {"min": lo, "opt": opt, "max": hi}
        if sequence is not None:
            prof["sequence"] = dict(zip(("min", "opt", "max"), sequence, strict=True))
        return {"build_s": round(seconds, 3), "profile": prof}


def fp32_exclusions(onnx_path: Path) -> dict[str, list[str]]:
    """What AutoCast must leave in FP32: in a graph that ranks (a TopK), the scores from the GEMM to the top-k
    and the rerank. The gap between the 10th and 11th best similarity score (~7e-4 at full size) is about one
    FP16 step at 0.66, so FP16 scores would reorder the top-k."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    if not any(n.op_type == "TopK" for n in graph.node):
        return {"nodes_to_exclude": [], "op_types_to_exclude": []}
    return {"nodes_to_exclude": list(FP32_NODE_PATTERNS), "op_types_to_exclude": list(FP32_OP_TYPES)}


def fp16_onnx(onnx_path: Path, out: Path) -> tuple[Path, dict[str, list[str]]]:
    """`onnx_path` as mixed FP16 / FP32 with FP32 inputs and outputs (ModelOpt AutoCast), saved to `out`."""
    import onnx

    autocast = import_autocast()
    keep = fp32_exclusions(onnx_path)
    model = autocast.convert_to_mixed_precision(
        onnx_path=str(onnx_path), low_precision_type="fp16", keep_io_types=True, **keep
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out, keep


def build_model(
    builder: EngineBuilder,
    model: str,
    repo: Path,
    manifest_sha: str | None,
    gpu: dict[str, str],
    work: Path | None = None,
) -> dict[str, Any]:
    """Both plans of `model`; `work` holds the FP16 ONNX files AutoCast writes (default: beside the timing cache)."""
    vdir = spec.version_dir(model, repo)
    work = work or builder.timing_cache.parent
    batches = batch_sizes(model, repo)
    results = {}
    for onnx_name, plan_name in ((spec.ONNX_FP32, spec.PLAN_FP16), (spec.ONNX_INT8, spec.PLAN_INT8)):
        onnx_path, plan_path = vdir / onnx_name, vdir / plan_name
        if not onnx_path.is_file():
            raise CliError(f"{model}: {onnx_path} is missing; run export.onnx_export and calibration.calibrate first")
        int8 = plan_name == spec.PLAN_INT8 and has_qdq(onnx_path)
        if plan_name == spec.PLAN_INT8 and not int8:
            log.info("%s: %s has no Q/DQ nodes (an FP32 copy): INT8 plan built with FP16 only", model, onnx_name)
        built_from, fp32_kept = onnx_path, None
        if not int8:  # FP16 for a strongly typed network: the types must be in the file
            built_from, fp32_kept = fp16_onnx(onnx_path, work / f"{model}.{plan_name.removesuffix('.plan')}.fp16.onnx")
        info = builder.build(built_from, plan_path, batches, int8, spec.MODELS[model].extra.get("sequence"))
        prov = {
            "plan": plan_name,
            "plan_sha256": sha256_file(plan_path),
            "onnx": onnx_name,
            "onnx_sha256": sha256_file(onnx_path),
            "built_from": "the Q/DQ file as typed" if int8 else "ModelOpt AutoCast FP16 of the file",
            "fp32_kept": fp32_kept,
            "calibration_manifest_sha256": manifest_sha if int8 else None,
            "precision": "int8 (Q/DQ) + fp32" if int8 else "fp16 + fp32 (AutoCast)",
            "tensorrt_version": builder.trt.__version__,
            "gpu": gpu["name"],
            "compute_capability": gpu["compute_capability"],
            "driver": gpu["driver"],
            **info,
        }
        write_json(provenance_path(plan_path), prov)
        results[plan_name] = prov
    return results


# ----------------------------------------------------------------------------- CLI


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, required=True, help="artifacts directory (timing cache, reports)")
    p.add_argument("--repo", type=Path, required=True, help="model repository holding <model>/1/model*.onnx")
    p.add_argument("--target", choices=("cpu", "gpu"), required=True, help="cpu: skip quietly without TensorRT")
    p.add_argument("--models", help=f"comma-separated subset of {','.join(graphs.ALL_MODELS)} (default: all)")
    p.add_argument("--workspace-gib", type=float, default=WORKSPACE_BYTES / 2**30, help="builder workspace limit")
    p.add_argument("-v", "--verbose", action="store_true", help="TensorRT verbose log")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = graphs.parse_models(args.models)
    require_dir(args.artifacts, "artifacts directory")
    require_dir(args.repo, "model repository")
    spec.use_dims_of(args.artifacts)  # the window, horizon and embedding sizes training used
    if args.workspace_gib <= 0:
        raise CliError(f"--workspace-gib must be positive, got {args.workspace_gib}")
    setup_logging(args.verbose)

    reason = unavailable_reason()
    if reason is not None:
        print(f"{reason}: TensorRT plans skipped; {HINT}")
        return 0 if args.target == "cpu" else 1

    gpu = gpu_info()
    assert gpu is not None
    manifest = args.artifacts / "calibration" / "manifest.json"
    manifest_sha = sha256_file(manifest) if manifest.is_file() else None
    builder = EngineBuilder(args.artifacts / "tensorrt" / TIMING_CACHE, int(args.workspace_gib * 2**30), args.verbose)
    log.info(
        "TensorRT %s on %s (compute capability %s)", builder.trt.__version__, gpu["name"], gpu["compute_capability"]
    )
    report = {"tensorrt_version": builder.trt.__version__, "gpu": gpu, "models": {}}
    for name in names:
        report["models"][name] = build_model(builder, name, args.repo, manifest_sha, gpu)
        for plan in (spec.PLAN_FP16, spec.PLAN_INT8):
            for problem in check_plan_provenance(spec.version_dir(name, args.repo) / plan):
                raise CliError(f"{name}: {problem}")
    write_json(graphs.reports_dir(args.artifacts) / "engines.json", report)
    print(f"built {2 * len(names)} TensorRT plans with TensorRT {builder.trt.__version__} on {gpu['name']}")
    return 0


if __name__ == "__main__":
    run_main(PROG, main)
