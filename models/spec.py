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
# text_encoder, cpu target: the fastest of five candidate files (FP32, fused FP32, dynamic INT8, fused + dynamic
# INT8, static Q/DQ) that meets the accuracy gates, chosen at export (calibration/calibrate.py); TensorRT parses
# neither MatMulInteger nor fused contrib ops, so the gpu target builds its plans from model.onnx and model.int8.onnx.
ONNX_CPU = "model.cpu.onnx"
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


@dataclass(frozen=True)
class Dims:
    """The sizes a repository serves: the window and horizon of the forecasters, the embedding dimension.
    The defaults are the project's; `make export SERIES=... INPUT_SIZE=... HORIZON=...` or a catalog of
    another dimension trains and serves others, recorded in `<artifacts>/data/manifest.json` (key "dims")."""

    input_size: int = INPUT_SIZE
    horizon: int = HORIZON
    embed_dim: int = EMBED_DIM
    text_dim: int = 384  # the text encoder's embedding (all-MiniLM-L6-v2's; `make export ENCODER=...`: its own)
    vocab_size: int = 30_522  # the text encoder's vocabulary: the value guard's token-id range


DEFAULT_DIMS = Dims()


TEXT = Tensor("text", "object", (1,))  # one UTF-8 text per row
INPUT_IDS = Tensor("input_ids", "int64", (SEQUENCE,))
ATTENTION_MASK = Tensor("attention_mask", "int64", (SEQUENCE,))
TEXT_BATCH = 64
TEXT_DIM = 384  # all-MiniLM-L6-v2's embedding (DIMS.text_dim: the exported encoder's)


def _models(d: Dims) -> dict[str, ModelSpec]:
    window = Tensor("window", "float32", (d.input_size,))
    forecast = Tensor("forecast", "float32", (d.horizon,))
    both = (Tensor("nhits_forecast", "float32", (d.horizon,)), Tensor("reservoir_forecast", "float32", (d.horizon,)))
    top = (Tensor("scores", "float32", (TOP_K,)), Tensor("ids", "int64", (TOP_K,)))
    user = Tensor("user_id", "int64", (1,))
    return {
        m.name: m
        for m in (
            ModelSpec("nhits", (window,), (forecast,), max_batch_size=1024),
            ModelSpec("reservoir", (window,), (forecast,), max_batch_size=256),
            ModelSpec("forecast_blend", both, (forecast,), max_batch_size=1024),
            ModelSpec("similarity", (Tensor("query", "float32", (d.embed_dim,)),), top, max_batch_size=256),
            ModelSpec(
                "user_embedding", (user,), (Tensor("embedding", "float32", (d.embed_dim,)),), max_batch_size=1024
            ),
            ModelSpec(
                "text_encoder",
                (INPUT_IDS, ATTENTION_MASK),
                (Tensor("embedding", "float32", (d.text_dim,)),),
                max_batch_size=TEXT_BATCH,
                # value guard ranges (models/guard.py); TensorRT profiles over the token axis: (min, opt, max)
                extra={
                    "ranges": {"input_ids": (0, d.vocab_size), "attention_mask": (0, 2)},
                    "sequence": (1, 32, MAX_TOKENS),
                },
            ),
            ModelSpec("tokenizer", (TEXT,), (INPUT_IDS, ATTENTION_MASK), max_batch_size=TEXT_BATCH, python=True),
            ModelSpec("forecast", (window,), (forecast, *both), max_batch_size=256, ensemble=True),
            ModelSpec("recommend", (user,), top, max_batch_size=256, ensemble=True),
            # Stateful streaming reservoir (one tick per request, state kept per sequence).
            ModelSpec(
                "reservoir_stream",
                (Tensor("tick", "float32", (1,)),),
                (forecast,),
                max_batch_size=256,
                extra={"state": Tensor("state", "float32", (RESERVOIR_UNITS,))},  # gpu: state_in -> state_out
            ),
        )
    } | (
        # text -> tokenizer -> text_encoder -> similarity: only where the catalog lives in the encoder's space
        {"search": ModelSpec("search", (TEXT,), top, max_batch_size=TEXT_BATCH, ensemble=True)}
        if d.embed_dim == d.text_dim
        else {}
    )


# Models a repository serves only with some dims (`search` needs a catalog of the encoder's dimension): make
# export retires their folders when the dims it serves leave them out (repository.publish).
OPTIONAL_MODELS = ("search",)
MODELS: dict[str, ModelSpec] = _models(DEFAULT_DIMS)
DIMS = DEFAULT_DIMS
WINDOW = MODELS["nhits"].inputs[0]
FORECAST = MODELS["nhits"].outputs[0]
STREAM = MODELS["reservoir_stream"]


def use_dims(dims: Dims) -> Dims:
    """Serve `dims` from now on in this process: MODELS (in place), WINDOW, FORECAST, STREAM and the size
    constants follow. Every stage calls use_dims_of(artifacts) first, so all of them agree with training."""
    global DIMS, INPUT_SIZE, HORIZON, EMBED_DIM, TEXT_DIM, VOCAB_SIZE, WINDOW, FORECAST, STREAM
    if min(dims.input_size, dims.horizon, dims.embed_dim, dims.text_dim, dims.vocab_size) < 1:
        raise ValueError(f"dims must be positive: {dims}")
    DIMS, INPUT_SIZE, HORIZON, EMBED_DIM = dims, dims.input_size, dims.horizon, dims.embed_dim
    TEXT_DIM, VOCAB_SIZE = dims.text_dim, dims.vocab_size
    MODELS.clear()
    MODELS.update(_models(dims))
    WINDOW, FORECAST, STREAM = MODELS["nhits"].inputs[0], MODELS["nhits"].outputs[0], MODELS["reservoir_stream"]
    return dims


def dims_of(artifacts: Path) -> Dims:
    """The dims training recorded in `<artifacts>/data/manifest.json` (the defaults when it names none)."""
    import json

    path = Path(artifacts) / "data" / "manifest.json"
    if not path.is_file():
        return DEFAULT_DIMS
    return Dims(**json.loads(path.read_text()).get("dims", {}))


def use_dims_of(artifacts: Path) -> Dims:
    return use_dims(dims_of(artifacts))


# Models with an ONNX file of their own (the ensembles have none).
EXPORTED = ("nhits", "reservoir", "forecast_blend", "similarity", "user_embedding", "text_encoder")


def version_dir(model: str, repo: Path | None = None) -> Path:
    return (repo or MODEL_REPOSITORY) / model / "1"


def served_version_dir(model: str, repo: Path | None = None) -> Path:
    """The version Triton serves under `latest 1` (its default policy): the highest numeric folder, which
    is version 1 until serving.rollout adds another."""
    root = (repo or MODEL_REPOSITORY) / model
    versions = [int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
    return root / str(max(versions)) if versions else version_dir(model, repo)
