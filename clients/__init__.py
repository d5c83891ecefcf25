"""Thin Triton clients for every model and ensemble, over gRPC and HTTP, sync and asyncio.

    from clients import Client
    with Client("127.0.0.1:8001") as c:
        print(c.nhits(windows).values)        # (B, 24) float32

`python -m clients --help` lists the command-line subcommands (one per model and ensemble, and `demo`).
"""

from clients.client import (
    AsyncClient,
    CircuitBreaker,
    Client,
    RetryPolicy,
    ranges_from_repository,
)
from clients.errors import (
    ClientError,
    DeadlineExceededError,
    InferenceServerError,
    InvalidInputError,
    QueueFullError,
    QueueTimeoutError,
    RejectedError,
    ServerUnavailableError,
)
from clients.results import Answer, Embedding, EnsembleForecast, Forecast, Tokens, TopK
from clients.transport import Priority

__all__ = [
    "Answer",
    "AsyncClient",
    "CircuitBreaker",
    "Client",
    "ClientError",
    "DeadlineExceededError",
    "Embedding",
    "EnsembleForecast",
    "Forecast",
    "InferenceServerError",
    "InvalidInputError",
    "Priority",
    "QueueFullError",
    "QueueTimeoutError",
    "RejectedError",
    "RetryPolicy",
    "ServerUnavailableError",
    "Tokens",
    "TopK",
    "ranges_from_repository",
]
