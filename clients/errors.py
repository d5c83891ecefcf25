"""One exception hierarchy for every client, and the mapping from tritonclient / transport errors onto it.

ClientError
├── InvalidInputError        the request is wrong: never retried (raised before sending when the client can tell)
├── ServerUnavailableError   nothing answered (refused, down, model not loaded): retried, then the next endpoint
├── DeadlineExceededError    no answer within the deadline: retried while time is left
├── RejectedError            the model's queue refused the request unrun (its priority lane's policy): not retried
│   ├── QueueFullError       the lane's queue is full (max_queue_size): the server sheds the load
│   └── QueueTimeoutError    it waited in the queue past its timeout (also a DeadlineExceededError)
└── InferenceServerError     the server answered with an error that is not the input's fault: not retried
"""

from __future__ import annotations

import asyncio
import re
import sys

from tritonclient.utils import InferenceServerException

_REQUEST_ID = re.compile(r"^\[request id: [^\]]*\]\s*")


class ClientError(Exception):
    """Base of every error raised by `clients`."""


class InvalidInputError(ClientError, ValueError):
    """The input is wrong (shape, dtype, NaN/Inf, id range, batch size): fix the request, do not retry it."""


class ServerUnavailableError(ClientError, ConnectionError):
    """No server answered at the endpoint(s), or the model is not loaded there."""


class DeadlineExceededError(ClientError, TimeoutError):
    """The call did not complete within its deadline."""


class InferenceServerError(ClientError, RuntimeError):
    """The server answered with an error that is not about the input (internal, permission, protocol)."""


class RejectedError(ClientError):
    """Triton's queue refused the request without running it, by the queue policy of its priority lane
    (`dynamic_batching { priority_queue_policy }` of the model). Never retried: the request did not run,
    and the same queue would refuse it again."""


class QueueFullError(RejectedError):
    """The model's queue for the request's priority already held its `max_queue_size` requests ("Exceeds
    maximum queue size"): the server sheds load. Send again later, or at another priority."""


class QueueTimeoutError(RejectedError, DeadlineExceededError):
    """The request waited in the model's queue past its timeout (what was left of its deadline, or its lane's
    default) and was refused unanswered ("Request timeout expired"): it never ran and will not."""


RETRYABLE = (ServerUnavailableError, DeadlineExceededError)
QUEUE_FULL = "Exceeds maximum queue size"  # Triton's message (core scheduler_utils.cc)
QUEUE_TIMEOUT = "Request timeout expired"  # Triton's message (core dynamic_batch_scheduler.cc)


def _clean(message: str) -> str:
    return _REQUEST_ID.sub("", message or "").strip()


def from_triton(exc: InferenceServerException, where: str) -> ClientError:
    """Map a tritonclient exception (gRPC status or HTTP code) onto the hierarchy; `where` names endpoint/model."""
    status = str(exc.status() or "")
    message = _clean(exc.message() or str(exc))
    text = f"{where}: {message}"
    lowered = message.lower()
    if QUEUE_FULL.lower() in lowered:  # both come as UNAVAILABLE: never the retry a real outage gets
        return QueueFullError(text)
    if QUEUE_TIMEOUT.lower() in lowered:
        return QueueTimeoutError(text)
    if "restricted" in lowered:  # missing/wrong admin key: gRPC answers UNAVAILABLE, but retrying cannot help
        return InferenceServerError(text)
    if "unknown model" in lowered or "not ready" in lowered or "no available versions" in lowered:
        return ServerUnavailableError(text)
    code = status.removeprefix("StatusCode.")
    if code in ("INVALID_ARGUMENT", "400", "OUT_OF_RANGE"):
        return InvalidInputError(text)
    if code in ("UNAVAILABLE", "503", "NOT_FOUND", "404", "CANCELLED"):
        return ServerUnavailableError(text)
    if code in ("DEADLINE_EXCEEDED", "504", "408") or "deadline exceeded" in lowered:
        return DeadlineExceededError(text)
    return InferenceServerError(text)


def from_exception(exc: BaseException, where: str, timeout: float | None = None) -> ClientError:
    """Map any transport exception (tritonclient, socket, aiohttp, asyncio) onto the hierarchy."""
    if isinstance(exc, ClientError):
        return exc
    if isinstance(exc, InferenceServerException):
        return from_triton(exc, where)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        limit = f" of {timeout:.3g} s" if timeout is not None else ""
        return DeadlineExceededError(f"{where}: no answer within the deadline{limit}")
    if isinstance(exc, OSError):
        return ServerUnavailableError(f"{where}: {exc.strerror or exc}")
    aiohttp = sys.modules.get("aiohttp")  # only loaded when an async HTTP client is in use
    if aiohttp is not None and isinstance(exc, aiohttp.ClientConnectionError):
        return ServerUnavailableError(f"{where}: {exc}")
    return InferenceServerError(f"{where}: {type(exc).__name__}: {exc}")
