import numpy as np
import pytest

from models import data, spec

CFG = data.SeriesConfig(n_series=6, seed=3)


def test_series_are_deterministic_positive_and_of_the_configured_shape():
    a, b = data.make_series(CFG), data.make_series(CFG)
    assert a.shape == (CFG.n_series, CFG.length) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert (a > 0).all() and np.isfinite(a).all()
    assert not np.array_equal(a, data.make_series(data.SeriesConfig(n_series=6, seed=4)))


def test_series_have_daily_seasonality():
    logs = np.log(data.make_series(CFG)).astype(np.float64)
    d = np.diff(logs, axis=1)
    lag = lambda k: np.mean([np.corrcoef(r[:-k], r[k:])[0, 1] for r in d])  # noqa: E731
    assert lag(24) > lag(12) + 0.1


def test_splits_are_consecutive_in_time_and_disjoint():
    series = data.make_series(CFG)
    parts = data.split_series(series, CFG)
    assert list(parts) == list(data.SPLITS)
    np.testing.assert_array_equal(np.concatenate(list(parts.values()), axis=1), series)
    assert parts["train"].shape[1] == CFG.train_weeks * data.WEEK
    assert parts["validation"].shape[1] == CFG.validation_weeks * data.WEEK


def test_windows_are_input_then_horizon_of_one_series():
    series = np.arange(2 * 300, dtype=np.float32).reshape(2, 300)
    x, y = data.windows_from_series(series, stride=24)
    per_series = (300 - spec.INPUT_SIZE - spec.HORIZON) // 24 + 1
    assert x.shape == (2 * per_series, spec.INPUT_SIZE) and y.shape == (2 * per_series, spec.HORIZON)
    np.testing.assert_array_equal(y[:, 0], x[:, -1] + 1)
    np.testing.assert_array_equal(x[per_series, 0], 300.0)  # second series starts its own windows


def test_seasonal_naive_repeats_the_last_day():
    x = np.arange(spec.INPUT_SIZE, dtype=np.float32)[None, :]
    np.testing.assert_array_equal(data.seasonal_naive(x)[0], x[0, -24:])


def test_mackey_glass_is_deterministic_and_in_its_usual_range():
    mg = data.mackey_glass(n=500)
    np.testing.assert_array_equal(mg, data.mackey_glass(n=500))
    assert 0.2 < mg.min() and mg.max() < 1.5 and mg.std() > 0.1


def test_embeddings_are_normalised_clustered_and_deterministic():
    cat, users = data.make_embeddings(500, 300, n_clusters=8, seed=1)
    cat2, users2 = data.make_embeddings(500, 300, n_clusters=8, seed=1)
    np.testing.assert_array_equal(cat, cat2)
    np.testing.assert_array_equal(users, users2)
    assert cat.shape == (500, spec.EMBED_DIM) and users.shape == (300, spec.EMBED_DIM)
    np.testing.assert_allclose(np.linalg.norm(cat, axis=1), 1.0, atol=1e-5)
    # cluster structure: a user's best item is far closer than a random item
    sims = users @ cat.T
    assert sims.max(axis=1).mean() > 0.5 > np.abs(sims.mean())


def test_queries_differ_by_split_and_are_normalised():
    _, users = data.make_embeddings(50, 100, seed=0)
    q_train, ids_train = data.queries_from_users(users, "train", 20)
    q_test, ids_test = data.queries_from_users(users, "test", 20)
    assert not np.array_equal(ids_train, ids_test)
    np.testing.assert_allclose(np.linalg.norm(q_test, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(q_test, data.queries_from_users(users, "test", 20)[0])
    assert (np.einsum("nd,nd->n", q_test, users[ids_test]) > 0.8).all()  # a query resembles its user


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="unknown split"):
        data.split_name("holdout")


def test_persisted_data_reloads_exactly(tiny_artifacts):
    out, _ = tiny_artifacts
    for split in data.SPLITS:
        x, y = data.load_windows(out, split)
        assert x.dtype == y.dtype == np.float32
        assert x.shape[1:] == (spec.INPUT_SIZE,) and y.shape[1:] == (spec.HORIZON,)
        want_x, want_y = data.windows_from_series(data.load_series(out, split))
        np.testing.assert_array_equal(x, want_x)
        np.testing.assert_array_equal(y, want_y)
    series = data.make_series(data.SeriesConfig(n_series=4, seed=0))
    np.testing.assert_array_equal(data.load_series(out, "train"), series[:, : 18 * data.WEEK])
    assert data.load_queries(out, "test", 7).shape == (7, spec.EMBED_DIM)
