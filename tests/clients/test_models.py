"""Every model and both ensembles over gRPC and HTTP against ONNX Runtime on the same files; sync = async."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from clients import AsyncClient, Client, EnsembleForecast, Forecast, TopK
from models import spec

RTOL, ATOL = 1e-5, 1e-5


def close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("model", ["nhits", "reservoir", "similarity", "user_embedding", "forecast_blend"])
def test_every_model_matches_onnx_runtime_run_in_process(url, model, samples, onnx_runtime, ranges):
    with Client(url, ranges=ranges) as client:
        if model == "forecast_blend":
            nh = onnx_runtime("nhits", {"window": samples["window"]})["forecast"]
            rs = onnx_runtime("reservoir", {"window": samples["window"]})["forecast"]
            feed = {"nhits_forecast": nh, "reservoir_forecast": rs}
        else:
            name = spec.MODELS[model].inputs[0].name
            feed = {name: samples[name]}
        got = client.infer(model, *feed.values())
    want = onnx_runtime(model, feed)
    assert set(got) == set(want)
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype and got[name].shape == expected.shape
        if expected.dtype == np.int64:
            np.testing.assert_array_equal(got[name], expected)  # top-k ids: identical
        else:
            close(got[name], expected)


def test_forecast_ensemble_equals_its_steps_run_by_hand(url, samples):
    with Client(url) as client:
        ens = client.forecast(samples["window"])
        nh = client.nhits(samples["window"])
        rs = client.reservoir(samples["window"])
        blend = client.forecast_blend(nh.values, rs.values)
    assert isinstance(ens, EnsembleForecast) and ens.values.shape == (len(samples["window"]), spec.HORIZON)
    close(ens.nhits, nh.values)
    close(ens.reservoir, rs.values)
    close(ens.values, blend.values)


def test_recommend_ensemble_equals_its_steps_run_by_hand(url, samples, ranges):
    with Client(url, ranges=ranges) as client:
        top = client.recommend(samples["user_id"])
        by_hand = client.similarity(client.user_embedding(samples["user_id"]).values)
    assert isinstance(top, TopK) and top.ids.shape == (len(samples["user_id"]), spec.TOP_K)
    np.testing.assert_array_equal(top.ids, by_hand.ids)
    close(top.scores, by_hand.scores)


def test_results_are_typed_and_record_the_endpoint_that_answered(url, samples):
    with Client(url) as client:
        f = client.nhits(samples["window"])
    assert isinstance(f, Forecast) and f.model == "nhits" and f.endpoint == url
    assert f.attempts == 1 and f.latency_s > 0 and len(f) == len(samples["window"])


def test_a_flat_list_of_user_ids_is_accepted(url, samples):
    ids = samples["user_id"].reshape(-1)
    with Client(url) as client:
        a = client.recommend([int(i) for i in ids])
        b = client.recommend(samples["user_id"])
    np.testing.assert_array_equal(a.ids, b.ids)


def test_the_async_client_returns_exactly_what_the_sync_client_returns(url, samples):
    async def run_async() -> list:
        async with AsyncClient(url) as client:
            return [
                await client.nhits(samples["window"]),
                await client.reservoir(samples["window"][:2]),
                await client.forecast(samples["window"][:2]),
                await client.similarity(samples["query"]),
                await client.user_embedding(samples["user_id"]),
                await client.recommend(samples["user_id"]),
            ]

    with Client(url) as client:
        sync = [
            client.nhits(samples["window"]),
            client.reservoir(samples["window"][:2]),
            client.forecast(samples["window"][:2]),
            client.similarity(samples["query"]),
            client.user_embedding(samples["user_id"]),
            client.recommend(samples["user_id"]),
        ]
    for a, s in zip(asyncio.run(run_async()), sync, strict=True):
        assert type(a) is type(s) and a.model == s.model and a.endpoint == s.endpoint
        for key, value in vars(s).items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(getattr(a, key), value)
