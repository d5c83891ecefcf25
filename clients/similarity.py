"""similarity: cosine top-k over the catalog. query (B, 384) float32 -> scores (B, 10) float32, ids (B, 10) int64."""

from __future__ import annotations

from clients.op import Op
from clients.results import TopK
from models import spec

MODEL = spec.MODELS["similarity"]


def decode(outputs, **answer) -> TopK:
    return TopK(outputs["ids"], outputs["scores"], **answer)


OP = Op(MODEL, decode)
