"""The search ensemble equals its steps run by hand over HTTP and gRPC; the CLI prints MovieLens titles."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from clients import Client
from models import data, real_data, spec

PROTOCOLS = ("http", "grpc")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_search_equals_tokenizer_text_encoder_similarity_by_hand(triton_real, protocol):
    texts = list(real_data.QUERIES[:5])
    url = triton_real.http_url if protocol == "http" else triton_real.grpc_url
    with Client(url, protocol=protocol) as client:
        top = client.search(texts)
        tokens = client.tokenizer(texts)
        emb = client.text_encoder(tokens.ids, tokens.mask)
        steps = client.similarity(emb.values)
        one = client.search(texts[0])
    np.testing.assert_array_equal(top.ids, steps.ids)
    np.testing.assert_allclose(top.scores, steps.scores, rtol=1e-6)
    np.testing.assert_array_equal(one.ids[0], top.ids[0])
    assert top.ids.shape == (5, spec.TOP_K)


def test_search_finds_the_movie_a_title_names(triton_real, real_artifacts):
    """Real catalog: a catalog text searched verbatim is its own best match (cosine 1)."""
    items = data.load_catalog_items(real_artifacts)
    rows = [0, 17, 123]
    with Client(triton_real.grpc_url) as client:
        top = client.search([items["texts"][r] for r in rows])
    np.testing.assert_array_equal(top.ids[:, 0], rows)
    np.testing.assert_allclose(top.scores[:, 0], 1.0, atol=1e-4)


def test_cli_search_prints_titles(triton_real, real_artifacts):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "clients",
            "search",
            "space adventure with robots",
            "--url",
            triton_real.grpc_url,
            "--artifacts",
            str(real_artifacts),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    items = data.load_catalog_items(real_artifacts)
    titles = [line for line in out.splitlines() if "[movieId " in line]
    assert len(titles) == spec.TOP_K
    assert any(t in out for t in items["titles"])
