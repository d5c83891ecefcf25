"""nhits: N-HiTS forecaster. window (B, 168) float32 -> forecast (B, 24) float32."""

from __future__ import annotations

from clients.op import Op
from clients.results import Forecast
from models import spec

MODEL = spec.MODELS["nhits"]


def decode(outputs, **answer) -> Forecast:
    return Forecast(outputs["forecast"], **answer)


OP = Op(MODEL, decode)
