"""The real profile's training artifacts: catalog and users from MovieLens, forecasters scored on real series."""

import json

import numpy as np

from models import data, real_data, registry, spec


def test_catalog_rows_are_the_movielens_movies_embedded_by_the_encoder(real_artifacts, reference):
    items = data.load_catalog_items(real_artifacts)
    catalog, users = data.load_embeddings(real_artifacts)
    assert catalog.shape == (len(items["movie_ids"]), spec.EMBED_DIM) == (600, spec.EMBED_DIM)
    assert users.shape == (len(items["user_ids"]), spec.EMBED_DIM)
    rows = [0, 300, 599]
    want = reference.encode([items["texts"][r] for r in rows], convert_to_numpy=True, show_progress_bar=False)
    np.testing.assert_allclose(catalog[rows], want, atol=1e-5)
    sim = registry.load_model("similarity", real_artifacts)
    np.testing.assert_allclose(sim.catalog_t.numpy().T, catalog)


def test_users_are_the_normalised_mean_of_the_movies_they_liked(real_artifacts):
    movies = real_data.load_movielens(600)
    catalog, users = data.load_embeddings(real_artifacts)
    np.testing.assert_allclose(users, real_data.user_vectors(catalog, movies.ratings, len(movies.user_ids)), atol=1e-6)
    items = data.load_catalog_items(real_artifacts)
    assert items["user_ids"] == movies.user_ids.tolist() and items["movie_ids"] == movies.movie_ids.tolist()


def test_train_report_scores_real_series_against_seasonal_naive_and_the_recommender_against_popularity(real_artifacts):
    report = json.loads((real_artifacts / "reports" / "train.json").read_text())
    assert report["data"] == "real"
    for model in ("seasonal_naive", "nhits", "reservoir", "forecast_blend"):
        m = report["test_metrics"][model]
        assert np.isfinite(m["mae"]) and np.isfinite(m["smape"])
    assert set(report["real"]["test_by_series"]) == {"elecdemand", "DAX", "SMI", "CAC", "FTSE"}
    loo = report["real"]["leave_one_out"]
    assert loo["users"] > 100 and 0 <= loo["hit_rate"] <= 1 and 0 <= loo["popularity_hit_rate"] <= 1
    md = (real_artifacts / "reports" / "train.md").read_text()
    assert "Leave-one-out" in md and "| elecdemand |" in md
    assert data.manifest(real_artifacts)["data"] == "real"
