"""search ensemble: text (B,) str -> tokenizer -> text_encoder -> similarity -> top-k catalog ids and scores.

Texts are checked by the first step, the tokenizer (empty, not UTF-8, too long: InvalidInputError).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clients.op import Op, as_texts
from clients.results import TopK
from models import spec

MODEL = spec.MODELS["search"]
SCORES, IDS = (t.name for t in MODEL.outputs)


def decode(outputs: dict[str, np.ndarray], **answer: Any) -> TopK:
    return TopK(outputs[IDS], outputs[SCORES], **answer)


OP = Op(MODEL, decode, step="tokenizer", prepare=as_texts)
