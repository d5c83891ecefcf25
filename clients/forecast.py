"""forecast ensemble: window (B, 168) -> nhits and reservoir in parallel -> forecast_blend.

Returns the blend and both forecasts it was blended from. Values are checked by the first step, nhits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clients.op import Op
from clients.results import EnsembleForecast
from models import spec

MODEL = spec.MODELS["forecast"]
BLEND, NHITS, RESERVOIR = (t.name for t in MODEL.outputs)  # forecast, nhits_forecast, reservoir_forecast


def decode(outputs: dict[str, np.ndarray], **answer: Any) -> EnsembleForecast:
    return EnsembleForecast(outputs[BLEND], outputs[NHITS], outputs[RESERVOIR], **answer)


OP = Op(MODEL, decode, step="nhits")
