"""similarity: cosine top-k over the catalog. query (B, 384) float32 -> scores (B, 10) float32, ids (B, 10) int64."""

from __future__ import annotations

from typing import Any

import numpy as np

from clients.op import Op
from clients.results import TopK
from models import spec

MODEL = spec.MODELS["similarity"]
SCORES, IDS = (t.name for t in MODEL.outputs)


def decode(outputs: dict[str, np.ndarray], **answer: Any) -> TopK:
    return TopK(outputs[IDS], outputs[SCORES], **answer)


OP = Op(MODEL, decode)
