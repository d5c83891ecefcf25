"""recommend ensemble: user_id (B, 1) int64 -> user_embedding -> similarity -> top-k ids and scores.

A flat list of ids is accepted and given the trailing axis. Ids are checked by the first step, user_embedding.
"""

from __future__ import annotations

from clients.op import Op, as_ids
from clients.results import TopK
from models import spec

MODEL = spec.MODELS["recommend"]


def decode(outputs, **answer) -> TopK:
    return TopK(outputs["ids"], outputs["scores"], **answer)


OP = Op(MODEL, decode, step="user_embedding", prepare=as_ids)
