"""user_embedding: a gather from the user table. user_id (B, 1) int64 in [0, n_users) -> embedding (B, 384) float32.

A flat list of ids is accepted and given the trailing axis.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clients.op import Op, as_ids
from clients.results import Embedding
from models import spec

MODEL = spec.MODELS["user_embedding"]
EMBEDDING = MODEL.outputs[0].name  # "embedding"


def decode(outputs: dict[str, np.ndarray], **answer: Any) -> Embedding:
    return Embedding(outputs[EMBEDDING], **answer)


OP = Op(MODEL, decode, prepare=as_ids)
