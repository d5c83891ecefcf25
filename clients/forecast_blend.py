"""forecast_blend: nhits_forecast, reservoir_forecast (B, 24) float32 -> forecast (B, 24), weights fitted on validation."""

from __future__ import annotations

from clients.op import Op
from clients.results import Forecast
from models import spec

MODEL = spec.MODELS["forecast_blend"]


def decode(outputs, **answer) -> Forecast:
    return Forecast(outputs["forecast"], **answer)


OP = Op(MODEL, decode)
