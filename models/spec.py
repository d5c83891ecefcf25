"""One source of truth for model names, tensor names, shapes and artifact paths.

Export, calibration, the Triton configs, the backend, clients and perf all read
these names; a test checks that the `.pbtxt` files agree with them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

INPUT_SIZE = 168  # N-HiTS / reservoir window (one week of hourly ticks)
HORIZON = 24  # forecast horizon (one day)
EMBED_DIM = 384
TOP_K = 10
N_ITEMS = 62_423
N_USERS = 119_743
RESERVOIR_UNITS = 1000
VOCAB_SIZE = 30_522  # all-MiniLM-L6-v2's WordPiece vocabulary
MAX_TOKENS = 256  # the encoder's max_seq_length: the tokenizer truncates longer texts
MAX_TEXT_BYTES = 65_536  # the tokenizer refuses longer texts (a named error), before tokenizing them
SEQUENCE = -1  # a dynamic per-sample dim (tokens): [-1] in the configs, "sequence" in the ONNX graph

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("ARTIFACTS", ROOT / "artifacts"))
MODEL_REPOSITORY = Path(os.environ.get("MODEL_REPOSITORY", ROOT / "model_repository"))

ONNX_FP32 = "model.onnx"
ONNX_INT8 = "model.int8.onnx"
PLAN_FP16 = "model.plan"
PLAN_INT8 = "model.int8.plan"


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64", "object" (Triton TYPE_STRING: bytes per element)
    dims: tuple[int, ...]  # without the batch axis; SEQUENCE (-1) where the length varies


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int
    ensemble: bool = False
    python: bool = False  # served by Triton's python backend on both targets (one config.pbtxt)
    extra: dict = field(default_factory=dict)


WINDOW = Tensor("window", "float32", (INPUT_SIZE,))
FORECAST = Tensor("forecast", "float32", (HORIZON,))
TEXT = Tensor("text", "object", (1,))  # one UTF-8 text per row
INPUT_IDS = Tensor("input_ids", "int64", (SEQUENCE,))
ATTENTION_MASK = Tensor("attention_mask", "int64", (SEQUENCE,))
EMBEDDING = Tensor("embedding", "float32", (EMBED_DIM,))
SCORES = Tensor("scores", "float32", (TOP_K,))
IDS = Tensor("ids", "int64", (TOP_K,))
TEXT_BATCH = 64

MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec("nhits", (WINDOW,), (FORECAST,), max_batch_size=1024),
        ModelSpec("reservoir", (WINDOW,), (FORECAST,), max_batch_size=256),
        ModelSpec(
            "forecast_blend",
            (Tensor("nhits_forecast", "float32", (HORIZON,)), Tensor("reservoir_forecast", "float32", (HORIZON,))),
            (FORECAST,),
            max_batch_size=1024,
        ),
        ModelSpec(
            "similarity",
            (Tensor("query", "float32", (EMBED_DIM,)),),
            (Tensor("scores", "float32", (TOP_K,)), Tensor("ids", "int64", (TOP_K,))),
            max_batch_size=256,
        ),
        ModelSpec(
            "user_embedding",
            (Tensor("user_id", "int64", (1,)),),
            (Tensor("embedding", "float32", (EMBED_DIM,)),),
            max_batch_size=1024,
        ),
        ModelSpec(
            "text_encoder",
            (INPUT_IDS, ATTENTION_MASK),
            (EMBEDDING,),
            max_batch_size=TEXT_BATCH,
            # value guard ranges (models/guard.py); TensorRT profiles over the token axis: (min, opt, max)
            extra={"ranges": {"input_ids": (0, VOCAB_SIZE), "attention_mask": (0, 2)}, "sequence": (1, 32, MAX_TOKENS)},
        ),
        ModelSpec("tokenizer", (TEXT,), (INPUT_IDS, ATTENTION_MASK), max_batch_size=TEXT_BATCH, python=True),
        ModelSpec(
            "forecast",
            (WINDOW,),
            (
                FORECAST,
                Tensor("nhits_forecast", "float32", (HORIZON,)),
                Tensor("reservoir_forecast", "float32", (HORIZON,)),
            ),
            max_batch_size=256,
            ensemble=True,
        ),
        ModelSpec(
            "recommend",
            (Tensor("user_id", "int64", (1,)),),
            (Tensor("scores", "float32", (TOP_K,)), Tensor("ids", "int64", (TOP_K,))),
            max_batch_size=256,
            ensemble=True,
        ),
        ModelSpec("search", (TEXT,), (SCORES, IDS), max_batch_size=TEXT_BATCH, ensemble=True),
    )
}

# Models with an ONNX file of their own (the ensembles have none).
EXPORTED = ("nhits", "reservoir", "forecast_blend", "similarity", "user_embedding", "text_encoder")


def version_dir(model: str, repo: Path | None = None) -> Path:
    return (repo or MODEL_REPOSITORY) / model / "1"


# Stateful streaming reservoir (one tick per request, state kept per sequence).
STREAM = ModelSpec(
    "reservoir_stream",
    (Tensor("tick", "float32", (1,)),),
    (FORECAST,),
    max_batch_size=256,
    extra={"state": Tensor("state", "float32", (RESERVOIR_UNITS,))},  # gpu: state_in -> state_out
)
MODELS[STREAM.name] = STREAM
