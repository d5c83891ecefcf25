"""text_encoder: all-MiniLM-L6-v2 + mean pooling + L2 norm. input_ids, attention_mask (B, T) int64 -> (B, 384)."""

from __future__ import annotations

from typing import Any

import numpy as np

from clients.op import Op
from clients.results import Embedding
from models import spec

MODEL = spec.MODELS["text_encoder"]
EMBEDDING = MODEL.outputs[0].name


def decode(outputs: dict[str, np.ndarray], **answer: Any) -> Embedding:
    return Embedding(outputs[EMBEDDING], **answer)


OP = Op(MODEL, decode)
