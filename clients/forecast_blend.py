"""forecast_blend: nhits_forecast, reservoir_forecast (B, 24) float32 -> forecast (B, 24), weights fitted on validation."""

from __future__ import annotations

from typing import Any

import numpy as np

from clients.op import Op
from clients.results import Forecast
from models import spec

MODEL = spec.MODELS["forecast_blend"]
FORECAST = MODEL.outputs[0].name  # "forecast"


def decode(outputs: dict[str, np.ndarray], **answer: Any) -> Forecast:
    return Forecast(outputs[FORECAST], **answer)


OP = Op(MODEL, decode)
