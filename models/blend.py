"""forecast_blend: per-horizon-step convex combination of the N-HiTS and reservoir forecasts."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models import spec


def fit_weights(nhits: np.ndarray, reservoir: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares w_h in [0, 1] per step h of w * nhits + (1 - w) * reservoir ~ target; all (N, H)."""
    d = (nhits - reservoir).astype(np.float64)
    e = (target - reservoir).astype(np.float64)
    w = (d * e).sum(axis=0) / np.maximum((d * d).sum(axis=0), 1e-12)
    return np.clip(w, 0.0, 1.0).astype(np.float32)


class Blend(nn.Module):
    """forward(nhits_forecast (B, H), reservoir_forecast (B, H)) -> forecast (B, H)."""

    def __init__(self, weights: np.ndarray | None = None, horizon: int = spec.HORIZON):
        super().__init__()
        w = np.full(horizon, 0.5, np.float32) if weights is None else np.asarray(weights, np.float32)
        self.register_buffer("w_nhits", torch.from_numpy(w.copy()))  # (H,)
        self.register_buffer("w_reservoir", torch.from_numpy(1.0 - w))  # (H,)

    def forward(self, nhits_forecast: torch.Tensor, reservoir_forecast: torch.Tensor) -> torch.Tensor:
        return nhits_forecast * self.w_nhits + reservoir_forecast * self.w_reservoir
