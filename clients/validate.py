"""Client-side input checks that mirror the server's, message for message, so a bad request fails before it is sent.

Order and wording follow Triton core (request normalisation: batch axis, batch size, data type, shape) and then
the project's backend (`serving/backend/model.py` `_check`: empty batch, NaN/Inf, id range). For an ensemble the
value checks are reported the way Triton relays the failing step: "in ensemble 'recommend', user_embedding: ...".

In the `forecast` ensemble nhits and reservoir check the window in parallel and Triton relays whichever step
fails first; the client names nhits, the first step.

Two deliberate differences: a batch of 0 rows gets the backend's "has an empty batch" (Triton core reports a
byte-size mismatch), and with several inputs of different batch sizes the client names the first input whose
batch differs from the first input's (Triton core names whichever input its hash map visits first).
"""

from __future__ import annotations

import numpy as np
from tritonclient.utils import np_to_triton_dtype

from clients.errors import InvalidInputError
from models.spec import ModelSpec

Ranges = dict[str, tuple[int, int]]  # input name -> [lo, hi)


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
        if tuple(a.shape[1:]) != t.dims:
            return (
                f"unexpected shape for input '{t.name}' for model '{model.name}'. "
                f"Expected {_dims((-1, *t.dims))}, got {_dims(a.shape)}."
            )
    return None


def backend_problem(model: ModelSpec, arrays: dict[str, np.ndarray], ranges: Ranges | None) -> str | None:
    """What the project's backend `_check` would reject (empty batch, NaN/Inf, id out of range), or None."""
    for t in model.inputs:
        a = arrays[t.name]
        if a.shape[0] == 0:
            return f"input '{t.name}' has an empty batch"
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            bad = int(np.argwhere(~np.isfinite(a))[0][0])
            return f"input '{t.name}' contains NaN or Inf (batch row {bad})"
        if ranges and t.name in ranges:
            lo, hi = ranges[t.name]
            out = (a < lo) | (a >= hi)
            if out.any():
                return f"input '{t.name}' value {int(a[out][0])} is out of range [{lo}, {hi})"
    return None


def check(model: ModelSpec, arrays: dict[str, np.ndarray], ranges: Ranges | None = None, step: str = "") -> None:
    """Raise InvalidInputError with the server's message when the request would be rejected.

    `step` is the model whose backend checks the values: the model itself, or for an ensemble its first step.
    """
    problem = core_problem(model, arrays)
    if problem is not None:
        raise InvalidInputError(problem)
    problem = backend_problem(model, arrays, ranges)
    if problem is not None:
        prefix = f"in ensemble '{model.name}', {step}: " if model.ensemble else f"{model.name}: "
        raise InvalidInputError(prefix + problem)
