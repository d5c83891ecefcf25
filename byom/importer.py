"""What both importers share: ONNX export with the model's own dims, INT8 through the project's
calibration code, and repository entries whose configs are the project's configs with new dims.

An imported model is served like the project's own: `<repo>/<name>/config.pbtxt` (gpu target),
`<repo>/<name>/configs/cpu.pbtxt` (cpu target) and `<repo>/<name>/1/{model.onnx, model.int8.onnx}`
with a `model.onnx.json` record. The configs are copied from the template model of
`model_repository/` (batching, instance groups, sequence batching, parameters unchanged); only the
name and the tensor dims change, so a config never promises a shape the ONNX file does not have.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx

from common.cli import CliError
from common.files import sha256_file, sha256_files, write_json
from common.ort import ort_session
from export import graphs
from models import spec

log = logging.getLogger("byom")

TEMPLATE_REPOSITORY = spec.ROOT / "model_repository"  # the committed configs
INT8_BOUND = 1e-2  # INT8 vs FP32 relative error on held-out inputs; above it model.int8.onnx is an FP32 copy
# The default ONNX-vs-library bound of an import is derived from the model: the same weights run in float32 and
# in float64 (or the library's float64 run) differ by `float32_err`, the rounding this model amplifies; ONNX
# Runtime orders the same float32 sums differently, so its error is of that size, not equal to it. Bound =
# BOUND_MARGIN x float32_err, at least BOUND_FLOOR (rounding of any few-hundred-step float32 chain, ~100 eps)
# and at most BOUND_CEILING (the project's FP32 bound: an answer within it is the library's answer). A model
# whose float32_err alone exceeds BOUND_CEILING cannot be served in float32 and is refused before export.
BOUND_MARGIN = 4.0
BOUND_FLOOR = 1e-5
BOUND_CEILING = 1e-4
CONFIG_FILES = ("config.pbtxt", "configs/cpu.pbtxt")
SEQUENCE_CONTROLS = ("START", "END", "CORRID")


class Unsupported(CliError):
    """The trained model uses an option the project's module cannot express (the message names it)."""


def require(module: str, extra: str) -> ModuleType:
    """Import an optional library, or fail with one line saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise CliError(
            f"{module} is not importable ({e}); install the optional extra: pip install -e '.[{extra}]'"
        ) from None


@dataclass(frozen=True)
class Entry:
    """One served model of an import: ONNX tensors in forward() order and the project model it copies."""

    name: str
    template: str  # model_repository/<template>/ supplies the configs
    policy: str  # calibration.calibrate.POLICIES key (the same graph family, so the same INT8 rules)
    inputs: tuple[spec.Tensor, ...]
    outputs: tuple[spec.Tensor, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dims(self) -> dict[str, tuple[int, ...]]:
        return {t.name: t.dims for t in (*self.inputs, *self.outputs)}

    def version_dir(self, repo: Path) -> Path:
        return spec.version_dir(self.name, repo)


@dataclass(frozen=True)
class Bound:
    """The ONNX-vs-library bound of one import and where it came from."""

    value: float
    float32_err: float  # the same weights in float32 vs float64, max per answer
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "float32_vs_float64_rel_err": self.float32_err, "source": self.source}


def derive_bound(float32_err: float, given: float | None, what: str, fix: str) -> Bound:
    """`given` (--bound) as it is; else BOUND_MARGIN x float32_err within [BOUND_FLOOR, BOUND_CEILING].
    CliError when float32 alone misses BOUND_CEILING: `what` says which runs differ, `fix` what to change."""
    if given is not None:
        return Bound(given, float32_err, "--bound")
    if not float32_err <= BOUND_CEILING:  # NaN too
        raise CliError(
            f"this model cannot be served in float32: {what} differ by {float32_err:.3g} (relative, worst answer), "
            f"more than {BOUND_CEILING:g}; {fix}; or accept the error with --bound {_round_up(float32_err):g}"
        )
    value = min(BOUND_CEILING, max(BOUND_FLOOR, BOUND_MARGIN * float32_err))
    return Bound(
        value,
        float32_err,
        f"derived: {BOUND_MARGIN:g} x the float32-vs-float64 error {float32_err:.3g}, "
        f"within [{BOUND_FLOOR:g}, {BOUND_CEILING:g}]",
    )


def _round_up(x: float) -> float:
    """x rounded up to one significant digit, times BOUND_MARGIN (a --bound worth suggesting)."""
    x = BOUND_MARGIN * x
    if not np.isfinite(x) or x <= 0:
        return x
    e = 10.0 ** np.floor(np.log10(x))
    return float(np.ceil(x / e) * e)


def settle(report: dict[str, Any], bad: list[str], out_dir: Path, out_repo: Path, detail: str) -> None:
    """Record the outcome in `<out_dir>/report.json` (a refused import too); CliError when a bound failed,
    before anything reached `out_repo`."""
    report["passed"], report["failures"] = not bad, bad
    write_json(out_dir / "report.json", report)
    if bad:
        raise CliError(
            f"verification failed, {out_repo} is unchanged: {bad[0]} ({detail}); details in {out_dir / 'report.json'}"
        )


def commit(stage: Any, names: list[str]) -> None:
    """Move the verified entries from a repository.publish.Staging into the repository, or one CliError."""
    from repository.publish import PublishError

    try:
        stage.commit(names)
    except (PublishError, OSError) as e:
        raise CliError(str(e)) from None


def check_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise CliError(f"model name {name!r} must be letters, digits, '_' or '-' (it names a repository folder)")
    return name


# ----------------------------------------------------------------------------- ONNX


def export_onnx(entry: Entry, model: Any, example: tuple, path: Path, meta: dict[str, str]) -> dict[str, Any]:
    """torch -> ONNX with the project's exporter and its value guard (models.guard), dims pinned to the
    entry's, checked, metadata written."""
    from export import onnx_export

    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = onnx_export.guarded(model, entry.input_names, entry.output_names, {})
    exporter, opset = onnx_export.torch_export(model, example, path, entry.input_names, entry.output_names)
    proto = onnx.load(str(path))
    want = entry.dims()
    problems = []
    for kind, values, names in (
        ("input", proto.graph.input, entry.input_names),
        ("output", proto.graph.output, entry.output_names),
    ):
        if [v.name for v in values] != names:
            problems.append(f"{kind} names {[v.name for v in values]} != {names}")
            continue
        for v in values:
            dims = v.type.tensor_type.shape.dim
            if len(dims) != len(want[v.name]) + 1:
                problems.append(f"{kind} {v.name} has rank {len(dims)}, expected {len(want[v.name]) + 1}")
                continue
            dims[0].Clear()
            dims[0].dim_param = "batch"
            for d, size in zip(dims[1:], want[v.name], strict=True):
                d.Clear()
                d.dim_value = size
    if problems:
        raise CliError(f"{entry.name}: exported graph does not match the served tensors: {'; '.join(problems)}")
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **meta})
    proto.producer_name = "byom"
    onnx.save(proto, str(path), save_as_external_data=False)
    del proto
    onnx.checker.check_model(str(path), full_check=True)
    inferred = Path(str(path) + ".inferred")
    onnx.shape_inference.infer_shapes_path(str(path), str(inferred), strict_mode=True)  # proves the pinned dims
    inferred.unlink()
    feeds = {n: np.concatenate([t.detach().numpy()] * 4) for n, t in zip(entry.input_names, example, strict=True)}
    guard = graphs.guard_check(ort_session(path), feeds, {})
    if not guard["passed"]:
        raise CliError(f"{entry.name}: the exported value guard failed: {guard['problems'][0]}")
    return {"exporter": exporter, "opset": opset, "export_s": round(time.perf_counter() - t0, 3), "guard": guard}


def run_onnx(path: Path, feeds: dict[str, np.ndarray], batch: int = 256) -> list[np.ndarray]:
    """All outputs of an ONNX file over feeds, in batches."""
    sess = ort_session(path)
    n = len(next(iter(feeds.values())))
    parts = [sess.run(None, {k: v[i : i + batch] for k, v in feeds.items()}) for i in range(0, n, batch)]
    return [np.concatenate(p) for p in zip(*parts, strict=True)]


def run_stream(path: Path, ticks: np.ndarray, state_dim: int) -> np.ndarray:
    """ticks (S, T) fed one per call from the zero state (what the server does per sequence) -> (S, T, H)."""
    sess = ort_session(path)
    state = np.zeros((ticks.shape[0], state_dim), np.float32)
    out = []
    for t in range(ticks.shape[1]):
        forecast, state = sess.run(None, {"tick": ticks[:, t : t + 1].astype(np.float32), "state_in": state})
        out.append(forecast)
    return np.stack(out, axis=1)


# ----------------------------------------------------------------------------- INT8


def make_int8(
    entry: Entry, fp32: Path, calib: dict[str, np.ndarray], calib_path: Path, int8_error: Callable[[Path], float]
) -> dict[str, Any]:
    """model.int8.onnx beside `fp32` with the project's calibration code and the policy of `entry.policy`
    (which GEMMs stay FP32, symmetric per-channel Q/DQ). `int8_error(path)` measures a candidate against
    FP32 on held-out inputs; above INT8_BOUND, or when the project's Q/DQ checks reject the graph, the
    INT8 file becomes an explicit FP32 copy, as the project does for its own reservoir, and the attempt
    is kept in the report."""
    from calibration import calibrate

    int8 = fp32.with_name(spec.ONNX_INT8)
    calib_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(calib_path, **calib)
    calib_info = {
        "file": str(calib_path),
        "count": int(len(next(iter(calib.values())))),
        "sha256": sha256_file(calib_path),
    }
    source_sha = sha256_file(fp32)
    policy = calibrate.POLICIES[entry.policy]
    attempt: dict[str, Any] = {"policy": entry.policy, "why": policy.why, "calibration_set": calib_info}
    try:
        with tempfile.TemporaryDirectory(prefix="byom-int8-") as tmp:
            attempt.update(calibrate.quantize(entry.policy, fp32, int8, calib_path, Path(tmp)))
        meta = {
            "int8.source_onnx_sha256": source_sha,
            "int8.calibration_sha256": calib_info["sha256"],
            "int8.scheme": "qdq-symmetric-int8",
        }
        attempt["qdq"] = calibrate.finish_int8(entry.policy, fp32, int8, meta)
    except CliError as e:  # e.g. a readout with one output: its per-channel scale reads as per tensor
        err, reason = float("inf"), f"INT8 attempt rejected by the project's Q/DQ checks ({e})"
    else:
        err = float(int8_error(int8))
        reason = f"INT8 attempt differs from FP32 by {err:.3g} relative (bound {INT8_BOUND:g})"
    attempt["int8_vs_fp32_rel_err"] = err
    attempt["bound"] = INT8_BOUND
    if err <= INT8_BOUND:
        return {"quantized": True, **attempt}
    log.warning("%s: %s; model.int8.onnx is an FP32 copy", entry.name, reason)
    shutil.copyfile(fp32, int8)
    copy_meta = {"int8.source_onnx_sha256": source_sha, "int8.scheme": "fp32-copy"}
    calibrate.finish_int8(entry.policy, fp32, int8, copy_meta)
    return {"quantized": False, "why": f"{reason}; model.int8.onnx is an explicit FP32 copy", "int8_attempt": attempt}


# ----------------------------------------------------------------------------- repository entry


def write_configs(entry: Entry, out_repo: Path, template_repo: Path, prog: str) -> list[Path]:
    """Both configs of `entry` from the template model's configs: name and tensor dims replaced."""
    from google.protobuf import text_format

    from common.triton import load_config

    dims = entry.dims()
    written = []
    for rel in CONFIG_FILES:
        src = template_repo / entry.template / rel
        if not src.is_file():
            raise CliError(f"template config {src} is missing (--template-repo {template_repo})")
        cfg = load_config(src)
        cfg.name = entry.name
        for t in (*cfg.input, *cfg.output):
            if t.name in SEQUENCE_CONTROLS:
                continue
            if t.name not in dims:
                raise CliError(f"{src}: tensor {t.name!r} is not one of the imported model's {sorted(dims)}")
            del t.dims[:]
            t.dims.extend(dims[t.name])
        for warmup in cfg.model_warmup:
            for key, value in warmup.inputs.items():
                if key in dims:
                    del value.dims[:]
                    value.dims.extend(dims[key])
        if cfg.HasField("sequence_batching"):
            for state in cfg.sequence_batching.state:
                state_dims = dims[state.input_name]
                del state.dims[:]
                state.dims.extend(state_dims)
                for initial in state.initial_state:
                    del initial.dims[:]
                    initial.dims.extend(state_dims)
        header = (
            f"# Generated by {prog} from {entry.template}/{rel} of the project's model repository:\n"
            f"# the same settings, with this model's name and tensor dims. Re-run the import to regenerate.\n"
            "# (protobuf text format: fields at their default value, e.g. kind: CONTROL_SEQUENCE_START, are implied)\n"
        )
        dest = out_repo / entry.name / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(header + text_format.MessageToString(cfg))
        written.append(dest)
    entry.version_dir(out_repo).mkdir(parents=True, exist_ok=True)
    return written


def relative_errors(actual: np.ndarray, reference: np.ndarray, dim: int) -> np.ndarray:
    """One error per answer (a window's, a series' or a tick's `dim` outputs): max|a - r| / max(max|r|, 1e-12).

    Per answer, not over a whole sequence: an ESN's first ticks can be far larger than later ones, and
    one global denominator would hide the error of every later tick."""
    a = np.asarray(actual, np.float64).reshape(-1, dim)
    r = np.asarray(reference, np.float64).reshape(-1, dim)
    if a.shape != r.shape:
        return np.array([float("inf")])
    return np.array([graphs.relative_error(x, y) for x, y in zip(a, r, strict=True)])


def file_meta(prog: str, source: Path, name: str) -> dict[str, str]:
    return {
        "model_name": name,
        "byom.importer": prog,
        "byom.source": source.name,
        "byom.source_sha256": sha256_file(source)
        if source.is_file()
        else sha256_files(p for p in source.rglob("*") if p.is_file()),
    }
