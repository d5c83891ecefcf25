"""The batching helper: 1,000 assets in one call, split by the served batch size, sent concurrently, in order."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from clients import AsyncClient, Client, Forecast, InvalidInputError
from models import spec


def test_a_thousand_assets_come_back_complete_and_in_order(url, samples, onnx_runtime):
    windows = samples["windows_1000"]
    with Client(url, concurrency=4) as client:
        result = client.forecast_assets(windows)  # 16 requests of the largest preferred batch size
    assert isinstance(result, Forecast) and result.values.shape == (1000, spec.HORIZON)
    want = onnx_runtime("nhits", {"window": windows})["forecast"]
    np.testing.assert_allclose(result.values, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def test_the_batch_size_comes_from_the_served_config(url):
    with Client(url) as client:
        max_batch, preferred = client.limits("nhits")
    assert max_batch == spec.MODELS["nhits"].max_batch_size and preferred and max(preferred) <= max_batch


@pytest.mark.parametrize("batch_size", [1000, "max", 7])
def test_any_batch_size_gives_the_same_rows_in_the_same_order(url, samples, batch_size):
    windows = samples["windows_1000"][:100]
    with Client(url) as client:
        whole = client.nhits(windows).values
        split = client.map("nhits", windows, batch_size=batch_size).values
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-4)


def test_the_async_batching_helper_agrees_with_the_sync_one(url, samples):
    windows = samples["windows_1000"][:300]

    async def run() -> np.ndarray:
        async with AsyncClient(url) as client:
            return (await client.forecast_assets(windows, batch_size=64)).values

    with Client(url) as client:
        sync = client.forecast_assets(windows, batch_size=64).values
    # concurrent chunks may be batched together on the server, so the last bit can differ
    np.testing.assert_allclose(asyncio.run(run()), sync, rtol=1e-5, atol=1e-4)


def test_a_bad_row_is_named_by_its_index_in_the_whole_batch(dead_url, samples):
    windows = samples["windows_1000"].copy()
    windows[777, 5] = np.nan
    with pytest.raises(InvalidInputError, match=r"batch row 777"):
        Client(dead_url).map("nhits", windows, batch_size=64)


def test_a_batch_size_above_the_models_limit_is_refused(url, samples):
    with Client(url) as client, pytest.raises(ValueError, match="outside"):
        client.map("reservoir", samples["window"], batch_size=spec.MODELS["reservoir"].max_batch_size + 1)
