"""What every per-model module shares: its spec, how arguments become input tensors, how outputs become a result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from clients.errors import InvalidInputError
from clients.results import Answer
from clients.validate import Ranges, check, sentinel_problem
from models.spec import ModelSpec, Tensor


def as_input(value: Any, tensor: Tensor) -> np.ndarray:
    """numpy arrays pass as they are (validation names a wrong dtype); lists and scalars take the spec's dtype."""
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value, dtype=tensor.dtype)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"input '{tensor.name}' cannot be converted to {tensor.dtype}: {exc}") from None


def as_ids(value: Any, tensor: Tensor) -> np.ndarray:
    """Ids as (B, 1): a flat list or 1-D array of ids is given the trailing axis the model expects."""
    a = as_input(value, tensor)
    return a.reshape(-1, 1) if a.ndim == 1 else a


def as_texts(value: Any, tensor: Tensor) -> np.ndarray:
    """Texts as (B, 1) bytes objects: a str, bytes or a list / array of them; str is encoded as UTF-8."""
    if isinstance(value, str | bytes):
        value = [value]
    if isinstance(value, np.ndarray) and value.dtype == object and value.ndim == 2:
        return value
    try:
        rows = [
            v if isinstance(v, bytes) else str(v).encode("utf-8") for v in np.asarray(value, dtype=object).reshape(-1)
        ]
    except UnicodeEncodeError as exc:  # lone surrogates in a str
        raise InvalidInputError(f"input '{tensor.name}' cannot be encoded as UTF-8: {exc}") from None
    out = np.empty((len(rows), 1), dtype=object)
    out[:, 0] = rows
    return out


@dataclass(frozen=True)
class Op:
    """One model (or ensemble) as the clients call it."""

    spec: ModelSpec
    decode: Callable[..., Answer]  # decode(outputs: dict[name, array], **answer_fields) -> typed result
    step: str = ""  # ensembles: the step whose backend checks the values (named in its error messages)
    prepare: Callable[[Any, Tensor], np.ndarray] = as_input

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.spec.outputs]

    def encode(self, *args: Any) -> dict[str, np.ndarray]:
        if len(args) != len(self.spec.inputs):
            names = ", ".join(t.name for t in self.spec.inputs)
            raise TypeError(f"{self.name} takes {len(self.spec.inputs)} input(s) ({names}), got {len(args)}")
        return {t.name: self.prepare(a, t) for t, a in zip(self.spec.inputs, args, strict=True)}

    def check(self, arrays: dict[str, np.ndarray], ranges: Ranges | None = None) -> None:
        check(self.spec, arrays, ranges, self.step)

    def answered(self, arrays: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs, or InvalidInputError when the server answered a row with the in-graph sentinel."""
        problem = sentinel_problem(self.spec, arrays, outputs, self.step)
        if problem is not None:
            raise InvalidInputError(problem)
        return outputs
