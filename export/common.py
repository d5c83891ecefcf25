"""Plumbing shared by the export, calibration, engine and report stages.

Everything here is about files and command lines: tensor names per model, hashes,
JSON reports, the one-line CLI error convention. No stage logic lives here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from models import spec

log = logging.getLogger(__name__)

# Every model with an ONNX file of its own: the served models plus the streaming reservoir.
ALL_MODELS: tuple[str, ...] = (*spec.EXPORTED, spec.STREAM.name)
# Inputs / outputs of the streaming reservoir as exported: the state travels as state_in -> state_out
# (TensorRT backend implicit state on the gpu target; a per-sequence dictionary on the cpu target).
STREAM_STATE_IN = "state_in"
STREAM_STATE_OUT = "state_out"
TINY = 1e-12  # denominator floor of the relative error


class CliError(Exception):
    """A problem with the user's input or environment: printed as one line, never as a traceback."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line on stderr (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def io_names(model: str) -> tuple[list[str], list[str]]:
    """ONNX input and output tensor names of `model`, in forward() argument / return order."""
    s = spec.MODELS[model]
    inputs = [t.name for t in s.inputs]
    outputs = [t.name for t in s.outputs]
    if model == spec.STREAM.name:
        inputs.append(STREAM_STATE_IN)
        outputs.append(STREAM_STATE_OUT)
    return inputs, outputs


def io_tensors(model: str) -> tuple[list[spec.Tensor], list[spec.Tensor]]:
    """Like io_names, with dtype and per-sample dims."""
    s = spec.MODELS[model]
    inputs, outputs = list(s.inputs), list(s.outputs)
    if model == spec.STREAM.name:
        state: spec.Tensor = s.extra["state"]
        inputs.append(spec.Tensor(STREAM_STATE_IN, state.dtype, state.dims))
        outputs.append(spec.Tensor(STREAM_STATE_OUT, state.dtype, state.dims))
    return inputs, outputs


def parse_models(text: str | None, allowed: Sequence[str] = ALL_MODELS) -> list[str]:
    """`--models a,b` -> ["a", "b"]; None -> every allowed model. Unknown names raise CliError."""
    if text is None:
        return list(allowed)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise CliError(f"unknown model name(s) {', '.join(unknown) or repr(text)}; choose from {', '.join(allowed)}")
    return names


def require_dir(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_dir():
        raise CliError(f"{what} {path} is not a directory{'; ' + hint if hint else ''}")
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def strip_node_metadata(model: Any) -> int:
    """Drop each node's doc_string and metadata_props in the graph, its subgraphs and its functions.

    The dynamo exporter writes `pkg.torch.onnx.stack_trace` (source paths of the build machine) and the
    TorchScript one writes doc strings per node: neither is needed to run the model and neither may travel
    with an artifact (serving.integrity.scan_artifacts checks). Returns how many nodes carried any."""
    import onnx

    stripped = 0
    graphs = [model.graph, *model.functions]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            if node.doc_string or len(node.metadata_props):
                stripped += 1
            node.doc_string = ""
            del node.metadata_props[:]
            graphs.extend(a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
            graphs.extend(a.graphs[i] for a in node.attribute for i in range(len(a.graphs)))
    return stripped


def sha256_files(paths: Iterable[Path]) -> str:
    """One hash over several files (names and contents), in sorted order."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    """max|actual - reference| / max(max|reference|, TINY): one number per output tensor.

    Non-finite values count as equal only where both sides hold the same infinity; a NaN anywhere,
    or an infinity on one side only, makes the error infinite (never NaN, which compares as passing)."""
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if a.shape != r.shape:
        return float("inf")
    finite = np.isfinite(a) & np.isfinite(r)
    if not np.array_equal(a[~finite], r[~finite]) or np.isnan(a).any() or np.isnan(r).any():
        return float("inf")
    if not finite.any():
        return 0.0
    a, r = a[finite], r[finite]
    return float(np.max(np.abs(a - r)) / max(float(np.max(np.abs(r))), TINY))


GUARD_ROWS = (1, 3)  # rows of a verification batch that guard_check spoils
GUARD_BOUND = 1e-4  # good rows of a mixed batch vs the same rows alone (batch composition moves a row ~1e-6)


def guard_check(sess: Any, feeds: dict[str, np.ndarray], ranges: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """The in-graph value guard (models.guard) of an ONNX file on one batch of good rows.

    Rows GUARD_ROWS of the first input are spoiled (float: NaN, +Inf; ids: lo - 1, hi). They must answer
    the sentinels (NaN in float outputs, -1 in integer ones; a carried state_out: its state_in unchanged),
    and the other rows what the file answers for them alone, within GUARD_BOUND (ids equal except where
    their scores tie within it)."""
    in_names = [i.name for i in sess.get_inputs()]
    out_names = [o.name for o in sess.get_outputs()]
    n = len(feeds[in_names[0]])
    bad = [r for r in GUARD_ROWS if r < n - 1]
    good = [r for r in range(n) if r not in bad]
    spoilt = {k: v.copy() for k, v in feeds.items()}
    x = spoilt[in_names[0]]
    if np.issubdtype(x.dtype, np.floating):
        values = [np.nan, np.inf]
    else:
        lo, hi = ranges[in_names[0]]
        values = [lo - 1, hi]
    for row, value in zip(bad, values, strict=False):
        x[row].flat[0] = value
    got = dict(zip(out_names, sess.run(out_names, spoilt), strict=True))
    alone = dict(zip(out_names, sess.run(out_names, {k: v[good] for k, v in feeds.items()}), strict=True))
    problems: list[str] = []
    errors: dict[str, float] = {}
    for name in out_names:
        y = got[name]
        if name == STREAM_STATE_OUT:
            sentinel = np.array_equal(y[bad], feeds[STREAM_STATE_IN][bad])
        elif np.issubdtype(y.dtype, np.floating):
            sentinel = bool(np.isnan(y[bad]).all())
        else:
            sentinel = bool((y[bad] == -1).all())
        if not sentinel:
            problems.append(f"output {name}: bad rows {bad} do not answer the sentinel")
        if np.issubdtype(y.dtype, np.floating):
            errors[name] = relative_error(y[good], alone[name])
            if not errors[name] <= GUARD_BOUND:
                problems.append(f"output {name}: good rows moved by {errors[name]:.3g} > {GUARD_BOUND:g}")
        else:
            differ = y[good] != alone[name]
            if "scores" in got and differ.any():  # ties: equal scores in either order
                s_mixed, s_alone = got["scores"][good].astype(np.float64), alone["scores"].astype(np.float64)
                tol = GUARD_BOUND * max(float(np.max(np.abs(s_alone))), TINY)
                differ &= np.abs(s_mixed - s_alone) > tol
            errors[name] = float(differ.sum())
            if differ.any():
                problems.append(f"output {name}: {int(differ.sum())} ids of good rows differ")
    return {
        "rows": n,
        "bad_rows": bad,
        "spoilt_with": [str(v) for v in values[: len(bad)]],
        "good_rows_error": errors,
        "passed": not problems,
        "problems": problems,
    }


def reports_dir(artifacts: Path) -> Path:
    d = artifacts / "reports"
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_json(path: Path, data: Any) -> None:
    """Write atomically so a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def ort_session(path: Path, threads: int = 1) -> Any:
    """A CPU ONNX Runtime session. One thread by default: the 2-core machines are shared, and under load a
    second thread was measured slower than one (ORT and PyTorch alike)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )


def run_main(prog: str, main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> NoReturn:
    """Run a stage's main(); a CliError becomes one line on stderr and exit status 1."""
    try:
        code = main(argv)
    except CliError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
