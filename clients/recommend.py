"""recommend ensemble: user_id (B, 1) int64 -> user_embedding -> similarity -> top-k ids and scores.

A flat list of ids is accepted and given the trailing axis. Ids are checked by the first step, user_embedding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clients.op import Op, as_ids
from clients.results import TopK
from models import spec

MODEL = spec.MODELS["recommend"]
SCORES, IDS = (t.name for t in MODEL.outputs)


def decode(outputs: dict[str, np.ndarray], **answer: Any) -> TopK:
    return TopK(outputs[IDS], outputs[SCORES], **answer)


OP = Op(MODEL, decode, step="user_embedding", prepare=as_ids)
