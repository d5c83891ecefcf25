"""The search ensemble equals its steps run by hand over HTTP and gRPC; the CLI prints MovieLens titles."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from calibration.calibrate import TEXT_COSINE_MIN_GOAL
from clients import Client
from models import data, real_data, spec
from repository.layout import served_file

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


def test_search_finds_the_movie_a_title_names(triton_real, real_artifacts, real_repo):
    """Real catalog: a catalog text searched verbatim is its own best match (cosine 1)."""
    items = data.load_catalog_items(real_artifacts)
    rows = [0, 17, 123]
    with Client(triton_real.grpc_url) as client:
        top = client.search([items["texts"][r] for r in rows])
    np.testing.assert_array_equal(top.ids[:, 0], rows)
    # the catalog is FP32 (SentenceTransformer.encode at export); the query's encoder file is the cpu config's:
    # FP32 within the export bound, an INT8 file within its accuracy gate (cosine to FP32 per text)
    path = served_file(real_repo, "text_encoder")
    candidate = json.loads(path.with_name(path.name + ".json").read_text()).get("candidate", "fp32")
    bound = 1e-4 if candidate.endswith("fp32") else 1 - TEXT_COSINE_MIN_GOAL
    np.testing.assert_allclose(top.scores[:, 0], 1.0, atol=bound)


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
