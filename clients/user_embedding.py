"""user_embedding: a gather from the user table. user_id (B, 1) int64 in [0, n_users) -> embedding (B, 384) float32.

A flat list of ids is accepted and given the trailing axis.
"""

from __future__ import annotations

from clients.op import Op, as_ids
from clients.results import Embedding
from models import spec

MODEL = spec.MODELS["user_embedding"]


def decode(outputs, **answer) -> Embedding:
    return Embedding(outputs["embedding"], **answer)


OP = Op(MODEL, decode, prepare=as_ids)
