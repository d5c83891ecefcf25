"""Per-row value checks built into every exported graph: the wire contract for bad values.

Triton refuses wrong tensor names, shapes, dtypes and batch sizes per request. Values are another
matter: a native backend (ONNX Runtime, TensorRT) runs a whole dynamic batch as one call and cannot
fail one request of it, and ONNX `Gather` wraps a negative id to the end of the table. So each graph
checks its own rows and answers a bad row with a sentinel that no real answer has:

- a row with NaN or Inf in a float input, or an id outside [lo, hi) in an integer input, answers NaN in
  every float output and -1 in every integer output (similarity: scores NaN, ids -1);
- before the model runs, the bad row is replaced by a harmless one (1.0 everywhere, id lo), so it
  cannot disturb its batch-mates or index outside a table;
- a carried state output (reservoir_stream's `state_out`) keeps the row's incoming state: a bad tick
  answers NaN and leaves its sequence as it was (the state input itself is the server's, not checked).

The clients turn the sentinels into named errors (clients/validate.py); serving/README.md states the contract.
The ONNX ops used (IsNaN, IsInf, Not, And, Where, ReduceMin, comparisons) run in ONNX Runtime and TensorRT 10.
Every tensor here is (B, D): the (B, 1) row mask broadcasts over it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

FILL = 1.0  # what a bad float row is replaced with before the model sees it
ID_SENTINEL = -1


class Guarded(nn.Module):
    """model(*inputs) with the checks above. `ranges`: input index -> (lo, hi) for integer inputs;
    `carry`: output index -> input index whose value a bad row passes through unchanged."""

    def __init__(
        self,
        model: nn.Module,
        ranges: Mapping[int, tuple[int, int]] | None = None,
        carry: Mapping[int, int] | None = None,
    ):
        super().__init__()
        self.model = model
        self.ranges = dict(ranges or {})
        self.carry = dict(carry or {})  # a carried input is the server's own state, not checked

    def row_ok(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, 1) bool: the rows every checked input of which is good."""
        ok = None
        for i, x in enumerate(inputs):
            if i in self.carry.values():
                continue
            if x.is_floating_point():
                good = torch.isfinite(x)
            elif i in self.ranges:
                lo, hi = self.ranges[i]
                good = (x >= lo) & (x < hi)
            else:
                continue
            good = good.reshape(x.shape[0], -1) if x.dim() != 2 else good
            good = good.all(dim=1, keepdim=True) if good.shape[1] != 1 else good  # (B, 1)
            ok = good if ok is None else ok & good
        if ok is None:
            raise ValueError("Guarded: no float input and no integer input with a range: nothing to check")
        return ok

    def forward(self, *inputs: torch.Tensor):
        ok = self.row_ok(inputs)  # (B, 1): broadcasts over every (B, D) tensor
        safe = []
        for i, x in enumerate(inputs):
            if i in self.carry.values():
                safe.append(x)
            elif x.is_floating_point():
                safe.append(torch.where(ok, x, FILL))
            elif i in self.ranges:
                safe.append(torch.where(ok, x, self.ranges[i][0]))
            else:
                safe.append(x)
        out = self.model(*safe)
        single = isinstance(out, torch.Tensor)
        outs = (out,) if single else tuple(out)
        guarded = []
        for j, y in enumerate(outs):
            if j in self.carry:
                guarded.append(torch.where(ok, y, inputs[self.carry[j]]))
            else:
                guarded.append(torch.where(ok, y, float("nan") if y.is_floating_point() else ID_SENTINEL))
        return guarded[0] if single else tuple(guarded)
