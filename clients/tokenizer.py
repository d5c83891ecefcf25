"""tokenizer (python backend): text (B,) str -> input_ids, attention_mask (B, T) int64, T = the longest text.

Texts are sent as UTF-8; `bytes` pass as they are (the server names what is wrong with them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clients.op import Op, as_texts
from clients.results import Tokens
from models import spec

MODEL = spec.MODELS["tokenizer"]
IDS, MASK = (t.name for t in MODEL.outputs)


def decode(outputs: dict[str, np.ndarray], **answer: Any) -> Tokens:
    return Tokens(outputs[IDS], outputs[MASK], **answer)


OP = Op(MODEL, decode, prepare=as_texts)
