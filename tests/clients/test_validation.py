"""Client-side validation: rejected before any network call, with the server's own words."""

from __future__ import annotations

import time

import numpy as np
import pytest

from clients import Client, InvalidInputError
from models import spec

W, H, D = spec.INPUT_SIZE, spec.HORIZON, spec.EMBED_DIM


def _nan(shape, row, value=np.nan):
    a = np.ones(shape, np.float32)
    a[row, 3] = value
    return a


# (case id, model, inputs): each is something the server rejects
BAD = [
    ("wrong width", "nhits", (np.ones((2, W - 1), np.float32),)),
    ("no batch axis", "nhits", (np.ones((W,), np.float32),)),
    ("extra axis", "similarity", (np.ones((2, D, 1), np.float32),)),
    ("float64", "nhits", (np.ones((2, W)),)),
    ("int32 ids", "user_embedding", (np.ones((2, 1), np.int32),)),
    (
        "batch above max_batch_size",
        "reservoir",
        (np.ones((spec.MODELS["reservoir"].max_batch_size + 1, W), np.float32),),
    ),
    ("NaN", "nhits", (_nan((3, W), 1),)),
    ("Inf in an ensemble", "forecast", (_nan((3, W), 2, np.inf),)),
    ("NaN in the second input", "forecast_blend", (np.ones((2, H), np.float32), _nan((2, H), 1))),
    ("id past the table", "user_embedding", ("past",)),
    ("negative id in an ensemble", "recommend", (np.array([[3], [-1]], np.int64),)),
]


VALUE_CASES = (
    "NaN",
    "Inf in an ensemble",
    "NaN in the second input",
    "id past the table",
    "negative id in an ensemble",
)


def _inputs(args, ranges):
    return tuple(np.array([[0], [ranges["user_id"][1]]], np.int64) if isinstance(a, str) else a for a in args)


@pytest.mark.parametrize("model, args", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_invalid_input_is_rejected_before_any_network_call(dead_url, ranges, model, args):
    client = Client(dead_url, ranges=ranges, timeout=5.0)
    start = time.monotonic()
    with pytest.raises(InvalidInputError):
        client.call(model, *_inputs(args, ranges))
    assert time.monotonic() - start < 0.5
    assert client.status() == [(dead_url, "closed")] and client.endpoints[0].breaker.failures == 0
    client.close()


CORE = [b for b in BAD if b[0] not in VALUE_CASES]
VALUES = [b for b in BAD if b[0] in VALUE_CASES]


def checked_and_sent(url, ranges, model, args) -> tuple[str, str]:
    """The client's own refusal, and the error of the same request sent with validation off."""
    args = _inputs(args, ranges)
    with Client(url, ranges=ranges) as checking:
        with pytest.raises(InvalidInputError) as ours:
            checking.call(model, *args)
    with Client(url, validate=False, retries=0) as sending:
        with pytest.raises(InvalidInputError) as theirs:
            sending.call(model, *args)
        with pytest.raises(InvalidInputError):
            sending.infer(model, *args)  # the raw outputs too
    return str(ours.value), str(theirs.value)


@pytest.mark.parametrize("model, args", [b[1:] for b in CORE], ids=[b[0] for b in CORE])
def test_the_client_says_what_triton_says_about_a_malformed_request(url, ranges, model, args):
    ours, theirs = checked_and_sent(url, ranges, model, args)
    assert ours in theirs


@pytest.mark.parametrize("model, args", [b[1:] for b in VALUES], ids=[b[0] for b in VALUES])
def test_a_bad_value_sent_anyway_comes_back_as_the_sentinel_and_the_same_named_error(url, ranges, model, args):
    """Checked before sending, or (validate=False) sent and answered with the in-graph sentinel, which the client
    turns into an InvalidInputError naming the same input and row; never a real-looking answer."""
    ours, theirs = checked_and_sent(url, ranges, model, args)
    assert ours.split(": input ")[0] == theirs.split(": input ")[0]  # the model (and ensemble step)
    name = ours.split("input '")[1].split("'")[0]
    assert f"input '{name}'" in theirs
    assert ("NaN or Inf" in ours) == ("NaN or Inf" in theirs)


def test_an_empty_batch_is_rejected_before_sending(dead_url):
    with pytest.raises(InvalidInputError, match="empty batch"):
        Client(dead_url).nhits(np.ones((0, W), np.float32))


def test_numbers_that_are_not_numbers_are_rejected_before_sending(dead_url):
    with pytest.raises(InvalidInputError, match="cannot be converted to float32"):
        Client(dead_url).nhits([["a"] * W])


def test_without_a_known_table_size_the_servers_sentinel_still_raises_invalid_input(url, ranges):
    bad = ranges["user_id"][1] + 7
    with Client(url) as client:
        with pytest.raises(InvalidInputError, match=rf"input 'user_id' value {bad} is outside the model's table"):
            client.user_embedding([3, bad])
        with pytest.raises(InvalidInputError, match=r"in ensemble 'recommend', user_embedding: .*value -1 "):
            client.recommend([-1])
