"""Client-side input checks that mirror the server's, message for message, so a bad request fails before it is sent.

Order and wording follow Triton core (request normalisation: batch axis, batch size, data type, shape); then the
values that Triton cannot refuse per request (NaN/Inf, ids outside the table), which every exported graph answers
with a sentinel instead (models/guard.py: NaN in every float output, -1 in every id output). A bad value is refused
here before sending; when it was not (validate=False, or no id range known), `sentinel_problem` finds the rows
the server answered with the sentinel and the client raises the same InvalidInputError. For an ensemble the
message names its first step: "in ensemble 'recommend', user_embedding: ...".

With several inputs of different batch sizes the client names the first input whose batch differs from the
first input's (Triton core names whichever input its hash map visits first); a batch of 0 rows is refused
("has an empty batch": Triton core reports a byte-size mismatch).
"""

from __future__ import annotations

import numpy as np
from tritonclient.utils import np_to_triton_dtype

from clients.errors import InvalidInputError
from models.spec import MAX_TEXT_BYTES, SEQUENCE, ModelSpec

Ranges = dict[str, tuple[int, int]]  # input name -> [lo, hi)
MASK = "attention_mask"  # text_encoder: a row with no attended token has nothing to average (answers NaN)


def _dims(shape) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def core_problem(model: ModelSpec, arrays: dict[str, np.ndarray]) -> str | None:
    """What Triton core would reject in this request (batch axis, batch size, dtype, shape), or None."""
    batch = None
    for t in model.inputs:
        a = arrays[t.name]
        if a.ndim == 0:
            return f"input '{t.name}' has no shape but model requires batch dimension for '{model.name}'"
        if batch is None:
            batch = a.shape[0]
        elif a.shape[0] != batch:
            return f"input '{t.name}' batch size does not match other inputs for '{model.name}'"
    if model.max_batch_size and batch is not None and batch > model.max_batch_size:
        return f"inference request batch-size must be <= {model.max_batch_size} for '{model.name}'"
    for t in model.inputs:
        a = arrays[t.name]
        want = np.dtype(t.dtype)
        if a.dtype != want:
            got = np_to_triton_dtype(a.dtype)
            if got is None:
                return f"input '{t.name}' has dtype {a.dtype}, expected {want.name}"
            return f"inference input '{t.name}' data-type is '{got}', but model '{model.name}' expects '{np_to_triton_dtype(want)}'"
        dims = a.shape[1:]
        if len(dims) != len(t.dims) or any(w != SEQUENCE and d != w for d, w in zip(dims, t.dims, strict=True)):
            return (
                f"unexpected shape for input '{t.name}' for model '{model.name}'. "
                f"Expected {_dims((-1, *t.dims))}, got {_dims(a.shape)}."
            )
    return None


def value_problem(model: ModelSpec, arrays: dict[str, np.ndarray], ranges: Ranges | None) -> str | None:
    """An empty batch, or a value the graph answers with its sentinel (NaN/Inf, id out of range), or None."""
    ranges = {**model.extra.get("ranges", {}), **(ranges or {})}
    for t in model.inputs:
        a = arrays[t.name]
        if a.shape[0] == 0:
            return f"input '{t.name}' has an empty batch"
        if a.dtype == object:
            problem = text_problem(a)
            if problem is not None:
                return problem
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            bad = int(np.argwhere(~np.isfinite(a))[0][0])
            return f"input '{t.name}' contains NaN or Inf (batch row {bad})"
        if ranges and t.name in ranges:
            lo, hi = ranges[t.name]
            out = (a < lo) | (a >= hi)
            if out.any():
                return f"input '{t.name}' value {int(a[out][0])} is out of range [{lo}, {hi})"
        if t.name == MASK and a.ndim == 2 and not a.any(axis=1).all():
            return f"input '{t.name}' of batch row {int(np.flatnonzero(~a.any(axis=1))[0])} attends no token"
    return None


def text_problem(texts: np.ndarray) -> str | None:
    """What the tokenizer model refuses (model_repository/tokenizer/1/model.py, same wording), or None."""
    for i, value in enumerate(texts.reshape(-1)):
        if not isinstance(value, bytes):
            return f"text of row {i} is {type(value).__name__}, expected bytes"
        if len(value) > MAX_TEXT_BYTES:
            return f"text of row {i} has {len(value)} bytes, more than max_text_bytes={MAX_TEXT_BYTES}"
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"text of row {i} is not valid UTF-8 (byte {exc.start}: {exc.reason})"
        if not text.strip():
            return f"text of row {i} is empty"
    return None


def check(model: ModelSpec, arrays: dict[str, np.ndarray], ranges: Ranges | None = None, step: str = "") -> None:
    """Raise InvalidInputError with the server's message when the request would be rejected.

    `step` is the model whose backend checks the values: the model itself, or for an ensemble its first step.
    """
    problem = core_problem(model, arrays)
    if problem is not None:
        raise InvalidInputError(problem)
    problem = value_problem(model, arrays, ranges)
    if problem is not None:
        raise InvalidInputError(_prefix(model, step) + problem)


def _prefix(model: ModelSpec, step: str) -> str:
    return f"in ensemble '{model.name}', {step}: " if model.ensemble else f"{model.name}: "


def sentinel_rows(model: ModelSpec, outputs: dict[str, np.ndarray]) -> np.ndarray:
    """Indices of the rows answered with the sentinel: an output row that is NaN (float) or -1 (ids) throughout."""
    bad = None
    for t in model.outputs:
        y = np.asarray(outputs[t.name])
        rows = y.reshape(len(y), -1)
        hit = np.isnan(rows).all(axis=1) if np.issubdtype(y.dtype, np.floating) else (rows == -1).all(axis=1)
        bad = hit if bad is None else bad | hit
    return np.flatnonzero(bad) if bad is not None else np.array([], np.int64)


def sentinel_problem(
    model: ModelSpec, arrays: dict[str, np.ndarray], outputs: dict[str, np.ndarray], step: str = ""
) -> str | None:
    """What the server's sentinel rows say about the request (NaN/Inf or an id outside the table), or None."""
    rows = sentinel_rows(model, outputs)
    if not len(rows):
        return None
    r = int(rows[0])
    why = f"batch row {r} was answered with the invalid-input sentinel (serving/README.md: bad input)"
    ranges = model.extra.get("ranges", {})
    for t in model.inputs:
        a = np.asarray(arrays[t.name])[r]
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            why = f"input '{t.name}' contains NaN or Inf (batch row {r})"
            break
        if np.issubdtype(a.dtype, np.integer) and t.name in ranges:
            lo, hi = ranges[t.name]
            out = (a < lo) | (a >= hi)
            if out.any():
                why = f"input '{t.name}' value {int(a[out][0])} is out of range [{lo}, {hi}) (batch row {r})"
                break
            if t.name == MASK and not a.any():
                why = f"input '{t.name}' of batch row {r} attends no token"
                break
        elif np.issubdtype(a.dtype, np.integer):
            why = f"input '{t.name}' value {int(a.reshape(-1)[0])} is outside the model's table (batch row {r})"
            break
    more = f"; {len(rows) - 1} more row(s) answered the sentinel" if len(rows) > 1 else ""
    return _prefix(model, step) + why + more
