"""models.userdata: a user's series, catalog and users are checked with one line naming each problem, split as
the project splits its own data, and their ids kept."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from models import spec, userdata

INPUT, H = 48, 12


def frame(lengths=(120, 130), start=50.0) -> pd.DataFrame:
    rows = []
    for uid, n in zip("AB", lengths, strict=False):
        t = pd.date_range("2026-01-01", periods=n, freq="h")
        rows.append(pd.DataFrame({"unique_id": uid, "ds": t, "y": start + np.arange(n, dtype=float)}))
    return pd.concat(rows, ignore_index=True)


def read(tmp_path, df, suffix=".csv", **kw):
    path = tmp_path / f"series{suffix}"
    df.to_parquet(path) if suffix == ".parquet" else df.to_csv(path, index=False)
    return userdata.read_series(path, INPUT, H, **kw)


def test_a_long_format_csv_and_parquet_read_alike(tmp_path):
    a, b = read(tmp_path, frame()), read(tmp_path, frame(), ".parquet")
    assert a.uids == b.uids == ["A", "B"]
    assert all(np.array_equal(x, y) for x, y in zip(a.values, b.values, strict=True))


@pytest.mark.parametrize(
    "spoil, needle",
    [
        (lambda df: df.drop(columns="ds"), "no column 'ds'"),
        (lambda df: df.assign(y=df.y.where(df.index != 5)), "missing values: 1 rows have no y"),
        (lambda df: df.assign(y=df.y.where(df.index != 7, -1.0)), "values <= 0"),
        (lambda df: pd.concat([df.iloc[:3], df.iloc[2:3], df.iloc[3:]]), "duplicate timestamps"),
        (lambda df: pd.concat([df.iloc[1:2], df.iloc[:1], df.iloc[2:]]), "not sorted by time"),
        (lambda df: df.assign(y=df.y.astype(object).where(df.index != 4, "abc")), "y is not a number in row 6"),
    ],
)
def test_each_problem_is_one_line_that_names_it(tmp_path, spoil, needle):
    with pytest.raises(userdata.DataError) as info:
        read(tmp_path, spoil(frame()))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_series_shorter_than_input_plus_three_horizons_is_named(tmp_path):
    with pytest.raises(userdata.DataError, match=r"series 'B' has 80 values, fewer than input \+ 3 x horizon = 84"):
        read(tmp_path, frame(lengths=(120, 80)))


def test_values_at_or_below_zero_pass_without_the_log_transform(tmp_path):
    assert read(tmp_path, frame(start=-10.0), log_transform=False).uids == ["A", "B"]


def test_splits_forecast_inside_them_and_keep_each_series_length(tmp_path):
    s = read(tmp_path, frame(lengths=(120, 130)))
    parts = userdata.split(s, INPUT, H)
    hold = userdata.hold_size(s, INPUT, H)
    assert hold == H  # 10 % of 120 is one horizon
    assert parts["validation"].shape == parts["test"].shape == (2, INPUT + hold)
    assert np.array_equal(parts["test"][1], s.values[1][-(INPUT + hold) :])
    assert np.array_equal(parts["validation"][0][-hold:], s.values[0][-2 * hold : -hold])
    train = parts["train"]
    assert train.shape == (2, 130 - 2 * hold) and np.isnan(train[0, :10]).all() and not np.isnan(train[1]).any()


def test_vectors_are_normalised_and_ids_kept(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.standard_normal((20, 8))
    pd.DataFrame({"item_id": 100 + np.arange(20), "embedding": list(v)}).to_parquet(tmp_path / "c.parquet")
    pd.DataFrame({"id": 5 + np.arange(20), **{f"e{i}": v[:, i] for i in range(8)}}).to_csv(
        tmp_path / "c.csv", index=False
    )
    for path in (tmp_path / "c.parquet", tmp_path / "c.csv"):
        vectors, ids = userdata.read_vectors(path, "catalog")
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1) and vectors.shape == (20, 8)
        assert ids is not None and len(set(ids.tolist())) == 20
    np.save(tmp_path / "c.npy", v)
    assert userdata.read_vectors(tmp_path / "c.npy", "catalog")[1] is None


@pytest.mark.parametrize(
    "ids, needle",
    [(["a", "b", "c"], "not integers"), ([1, 1, 2], "appears 2 times"), ([-1, 0, 1], "negative")],
)
def test_ids_must_be_unique_non_negative_integers(tmp_path, ids, needle):
    pd.DataFrame({"user_id": ids, "embedding": list(np.eye(3))}).to_parquet(tmp_path / "u.parquet")
    with pytest.raises(userdata.DataError, match=needle):
        userdata.read_vectors(tmp_path / "u.parquet", "users")


def test_users_of_another_dimension_than_the_catalog_are_refused(tmp_path):
    with pytest.raises(userdata.DataError, match="dimension 4, the catalog's have 8"):
        userdata.check_users(np.ones((3, 8), np.float32), np.ones((2, 4), np.float32), None, tmp_path / "u.npy")


def test_a_zero_vector_is_refused(tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((2, 3)))
    with pytest.raises(userdata.DataError, match="row 0 is all zeros"):
        userdata.read_vectors(tmp_path / "z.npy", "catalog")


def test_the_train_command_line_turns_a_data_problem_into_one_line(tmp_path):
    df = frame()
    df.iloc[:3].to_csv(tmp_path / "short.csv", index=False)
    proc = subprocess.run(
        [sys.executable, "-m", "models.train", "--out", str(tmp_path / "a"), "--series", str(tmp_path / "short.csv")],
        cwd=spec.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "fewer than input + 3 x horizon = 240" in lines[0], lines
