"""Typed results: numpy arrays plus a record of who answered (model, endpoint, attempts, latency)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class Answer:
    """Where an answer came from. `endpoint` is "grpc://host:port" or "http://host:port"."""

    model: str
    endpoint: str = ""
    attempts: int = 1
    latency_s: float = 0.0

    def __len__(self) -> int:
        """Batch size."""
        return next(len(v) for v in vars(self).values() if isinstance(v, np.ndarray))


@dataclass(frozen=True)
class Forecast(Answer):
    values: np.ndarray  # (B, HORIZON) float32


@dataclass(frozen=True)
class EnsembleForecast(Forecast):
    """The `forecast` ensemble: the blend and the two forecasts it was blended from."""

    nhits: np.ndarray  # (B, HORIZON)
    reservoir: np.ndarray  # (B, HORIZON)


@dataclass(frozen=True)
class TopK(Answer):
    ids: np.ndarray  # (B, TOP_K) int64 catalog ids, best first
    scores: np.ndarray  # (B, TOP_K) float32 cosine similarities


@dataclass(frozen=True)
class Embedding(Answer):
    values: np.ndarray  # (B, EMBED_DIM) float32


@dataclass(frozen=True)
class Tokens(Answer):
    ids: np.ndarray  # (B, T) int64 WordPiece ids, [CLS] ... [SEP] then [PAD] (0)
    mask: np.ndarray  # (B, T) int64: 1 on tokens, 0 on padding


def concat(parts: list[Answer], latency_s: float) -> Answer:
    """Join results of consecutive chunks of one batch, in order, into one result of the same type."""
    first = parts[0]
    arrays = {
        f.name: np.concatenate([getattr(p, f.name) for p in parts])
        for f in dataclasses.fields(first)
        if isinstance(getattr(first, f.name), np.ndarray)
    }
    endpoints = list(dict.fromkeys(p.endpoint for p in parts))
    return dataclasses.replace(
        first,
        **arrays,
        endpoint=",".join(endpoints),
        attempts=max(p.attempts for p in parts),
        latency_s=latency_s,
    )
