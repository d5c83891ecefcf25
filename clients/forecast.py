"""forecast ensemble: window (B, 168) -> nhits and reservoir in parallel -> forecast_blend.

Returns the blend and both forecasts it was blended from. Values are checked by the first step, nhits.
"""

from __future__ import annotations

from clients.op import Op
from clients.results import EnsembleForecast
from models import spec

MODEL = spec.MODELS["forecast"]


def decode(outputs, **answer) -> EnsembleForecast:
    return EnsembleForecast(outputs["forecast"], outputs["nhits_forecast"], outputs["reservoir_forecast"], **answer)


OP = Op(MODEL, decode, step="nhits")
