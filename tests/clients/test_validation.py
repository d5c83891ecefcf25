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


@pytest.mark.parametrize("model, args", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_the_client_says_what_the_server_says_about_bad_input(url, ranges, model, args):
    args = _inputs(args, ranges)
    with Client(url, ranges=ranges) as checking:
        with pytest.raises(InvalidInputError) as ours:
            checking.call(model, *args)
    with Client(url, validate=False, retries=0) as sending:
        with pytest.raises(InvalidInputError) as theirs:
            sending.call(model, *args)
    server_says = str(theirs.value)
    if model == "forecast":  # nhits and reservoir check the window in parallel: either may report first
        server_says = server_says.replace("', reservoir: ", "', nhits: ")
    assert str(ours.value) in server_says


def test_an_empty_batch_is_rejected_before_sending(dead_url):
    with pytest.raises(InvalidInputError, match="empty batch"):
        Client(dead_url).nhits(np.ones((0, W), np.float32))


def test_numbers_that_are_not_numbers_are_rejected_before_sending(dead_url):
    with pytest.raises(InvalidInputError, match="cannot be converted to float32"):
        Client(dead_url).nhits([["a"] * W])


def test_without_a_known_table_size_the_server_still_rejects_a_bad_id_as_invalid_input(url, ranges):
    with Client(url) as client, pytest.raises(InvalidInputError, match=r"out of range \[0, \d+\)"):
        client.user_embedding([ranges["user_id"][1] + 7])
