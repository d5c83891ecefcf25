"""models.real_data: texts, users, leave-one-out and the series split, on the packaged data sets."""

import numpy as np

from models import data, real_data, spec


def test_movie_text_moves_the_article_and_lists_genres():
    assert real_data.movie_text("Deer Hunter, The", 1978.0, "Drama|War") == "The Deer Hunter (1978). Drama, War"
    assert real_data.movie_text("Heat", float("nan"), "(no genres listed)") == "Heat"


def test_user_vectors_are_the_normalised_mean_of_liked_movies():
    catalog = np.eye(4, dtype=np.float32)
    ratings = np.array([[0, 0, 5, 1], [0, 1, 4, 2], [0, 2, 1, 3], [1, 3, 2, 4]], dtype=np.float64)
    users = real_data.user_vectors(catalog, ratings, 2)
    np.testing.assert_allclose(users[0], [2**-0.5, 2**-0.5, 0, 0], rtol=1e-6)  # the 1-star movie left out
    np.testing.assert_allclose(users[1], [0, 0, 0, 1])  # nothing liked: the rated movies


def test_leave_one_out_holds_out_the_latest_like_and_beats_nothing_by_construction():
    rng = np.random.default_rng(0)
    catalog = rng.standard_normal((50, 8)).astype(np.float32)
    catalog /= np.linalg.norm(catalog, axis=1, keepdims=True)
    # one user who likes 20 near-copies of item 0's direction, the latest being item 0 itself
    near = np.argsort(-(catalog @ catalog[0]))[:21]
    rows = [[0, int(i), 5.0, t] for t, i in enumerate(near[::-1])]
    r = real_data.leave_one_out(catalog, np.array(rows, np.float64), 1, min_liked=20, k=10)
    assert r["users"] == 1 and 0.0 <= r["popularity_hit_rate"] <= 1.0


def test_real_series_are_split_by_time_and_end_together():
    s = real_data.load_series()
    assert s.names == ("elecdemand", "DAX", "SMI", "CAC", "FTSE")
    assert s.splits["test"].shape == (5, real_data.TEST_TICKS)
    assert s.splits["validation"].shape == (5, real_data.VALIDATION_TICKS)
    assert np.isfinite(s.splits["test"]).all() and np.isfinite(s.splits["validation"]).all()
    train = s.splits["train"]
    assert np.isfinite(train[0]).all() and train.shape[1] == 8760 - 840  # hours of 2014 minus val + test
    assert np.isnan(train[1, 0]) and np.isfinite(train[1, -1])  # stocks start later: NaN before, values after
    x, y = data.windows_from_series(train)
    assert np.isfinite(x).all() and np.isfinite(y).all() and x.shape[1] == spec.INPUT_SIZE


def test_movielens_slice_keeps_the_most_rated_movies_and_a_seeded_split():
    a, b = real_data.load_movielens(50), real_data.load_movielens(50)
    assert len(a.movie_ids) == 50 and np.array_equal(a.split, b.split)
    assert set(a.split) <= {"train", "validation", "test"}
    assert a.ratings[:, 1].max() < 50 and a.ratings[:, 0].max() < len(a.user_ids)
