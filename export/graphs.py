"""The ONNX graphs the export writes, as later stages check them: each model's tensor names, the
relative error between two answers, the in-graph value guard's check and metadata stripping."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import CliError
from models import spec

log = logging.getLogger(__name__)

# Every model with an ONNX file of its own: the served models plus the streaming reservoir.
ALL_MODELS: tuple[str, ...] = (*spec.EXPORTED, spec.STREAM.name)
# Inputs / outputs of the streaming reservoir as exported: the state travels as state_in -> state_out
# (TensorRT backend implicit state on the gpu target; a per-sequence dictionary on the cpu target).
STREAM_STATE_IN = "state_in"
STREAM_STATE_OUT = "state_out"
TINY = 1e-12  # denominator floor of the relative error


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


def strip_node_metadata(model: Any) -> int:
    """Drop each node's doc_string and metadata_props in the graph, its subgraphs and its functions.

    The dynamo exporter writes `pkg.torch.onnx.stack_trace` (source paths of the build machine) and the
    TorchScript one writes doc strings per node: neither is needed to run the model and neither may travel
    with an artifact (repository.integrity.scan_artifacts checks). Returns how many nodes carried any."""
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
