"""N-HiTS (Challu et al., AAAI 2023) with the default architecture of Nixtla neuralforecast's NHITS.

3 stacks x 1 block; each block max-pools the (flipped) residual input with kernel
[2, 2, 1] (ceil_mode), runs an MLP laid out as neuralforecast lays out
`mlp_units=[[512, 512]]` (Linear(in, 512), then Linear(512, 512) + ReLU twice),
and emits `input_size` backcast values and `max(h // n_freq_downsample, 1)`
forecast knots ([4, 2, 1] -> 6, 12, 24) that are linearly interpolated to the
horizon. Backcasts are subtracted from the residual, forecasts are summed onto
the last input value (neuralforecast's "Level with Naive1").

Per-window standard scaling happens inside the graph, so raw values go in and
raw values come out; every shape is static except the batch axis.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models import spec

POOLING = {"MaxPool1d": nn.MaxPool1d, "AvgPool1d": nn.AvgPool1d}
INTERPOLATION = ("linear", "nearest")


@dataclass(frozen=True)
class NHITSConfig:
    input_size: int = spec.INPUT_SIZE
    h: int = spec.HORIZON
    n_pool_kernel_size: tuple[int, ...] = (2, 2, 1)
    n_freq_downsample: tuple[int, ...] = (4, 2, 1)
    hidden: int = 512
    n_layers: int = 2
    min_scale: float = 1e-5  # floor of the per-window standard deviation
    pooling_mode: str = "MaxPool1d"  # or "AvgPool1d" (neuralforecast's pooling_mode)
    interpolation_mode: str = "linear"  # or "nearest" (neuralforecast's interpolation_mode)


class NHITSBlock(nn.Module):
    def __init__(
        self,
        input_size: int,
        h: int,
        pool: int,
        downsample: int,
        hidden: int,
        n_layers: int,
        pooling_mode: str = "MaxPool1d",
        interpolation_mode: str = "linear",
    ):
        super().__init__()
        if pooling_mode not in POOLING:
            raise ValueError(f"pooling_mode {pooling_mode!r} is not one of {sorted(POOLING)}")
        if interpolation_mode not in INTERPOLATION:
            raise ValueError(f"interpolation_mode {interpolation_mode!r} is not one of {INTERPOLATION}")
        self.input_size, self.h, self.interpolation_mode = input_size, h, interpolation_mode
        self.pool = POOLING[pooling_mode](kernel_size=pool, stride=pool, ceil_mode=True)
        pooled = math.ceil(input_size / pool)
        n_theta = input_size + max(h // downsample, 1)
        layers: list[nn.Module] = [nn.Linear(pooled, hidden)]
        for _ in range(n_layers):
            layers += [nn.Linear(hidden, hidden), nn.ReLU()]
        layers.append(nn.Linear(hidden, n_theta))
        self.layers = nn.Sequential(*layers)

    def forward(self, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.pool(residual.unsqueeze(1)).squeeze(1)  # (B, ceil(L / pool))
        theta = self.layers(pooled)  # (B, L + n_knots)
        backcast = theta[:, : self.input_size]
        knots = theta[:, self.input_size :].unsqueeze(1)  # (B, 1, n_knots)
        forecast = F.interpolate(knots, size=self.h, mode=self.interpolation_mode).squeeze(1)  # (B, H)
        return backcast, forecast


class NHITS(nn.Module):
    """forward(window (B, input_size) float32) -> forecast (B, h) float32, raw units in and out."""

    def __init__(self, cfg: NHITSConfig = NHITSConfig()):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(
            NHITSBlock(cfg.input_size, cfg.h, p, d, cfg.hidden, cfg.n_layers, cfg.pooling_mode, cfg.interpolation_mode)
            for p, d in zip(cfg.n_pool_kernel_size, cfg.n_freq_downsample, strict=True)
        )

    def scale(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = window.mean(dim=1, keepdim=True)  # (B, 1)
        std = torch.sqrt(((window - loc) ** 2).mean(dim=1, keepdim=True))
        return loc, torch.clamp(std, min=self.cfg.min_scale)

    def forward_scaled(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled window (B, L) -> scaled forecast (B, H)."""
        residual = z.flip(dims=(1,))
        forecast = z[:, -1:]  # (B, 1), broadcast over the horizon
        for block in self.blocks:
            backcast, block_forecast = block(residual)
            residual = residual - backcast
            forecast = forecast + block_forecast
        return forecast

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        loc, scale = self.scale(window)
        return self.forward_scaled((window - loc) / scale) * scale + loc

    def config_dict(self) -> dict:
        return asdict(self.cfg)
