import numpy as np
import torch

from models import data, spec
from models.similarity import Similarity, UserEmbedding


def test_top_k_equals_numpy_brute_force():
    catalog, users = data.make_embeddings(400, 50, n_clusters=10, seed=2)
    queries, _ = data.queries_from_users(users, "test", 16)
    model = Similarity(catalog, k=7).eval()
    with torch.no_grad():
        scores, ids = model(torch.from_numpy(queries * 3.0))  # unnormalised on purpose
    assert scores.dtype == torch.float32 and ids.dtype == torch.int64 and ids.shape == (16, 7)
    brute = queries.astype(np.float64) @ catalog.T.astype(np.float64)
    want_ids = np.argsort(-brute, axis=1)[:, :7]
    np.testing.assert_array_equal(ids.numpy(), want_ids)
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(brute, want_ids, axis=1), atol=1e-5)


def test_default_k_is_the_spec_top_k():
    catalog, _ = data.make_embeddings(100, 1, seed=0)
    assert Similarity(catalog).k == spec.TOP_K


def test_user_embedding_gathers_the_right_rows():
    _, users = data.make_embeddings(10, 30, seed=0)
    ids = np.array([[3], [0], [29], [3]], dtype=np.int64)
    with torch.no_grad():
        out = UserEmbedding(users).eval()(torch.from_numpy(ids))
    assert out.shape == (4, spec.EMBED_DIM)
    np.testing.assert_array_equal(out.numpy(), users[ids[:, 0]])
