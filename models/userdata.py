"""Your data: a user's series, catalog and users, checked, then shaped as what training reads.

    series   long format `unique_id, ds, y` (what neuralforecast reads), .csv or .parquet
    catalog  .npy (n_items, D), or .parquet / .csv with an id column (`item_id` or `id`) and either one
             column of vectors or D numeric columns
    users    the same for users (`user_id` or `id`); without it the user table is made from the catalog

Every problem is one line naming it and what to do: a missing column or value, a series shorter than
input + 3 x horizon (one training window plus a validation and a test horizon), values <= 0 where the
reservoir forecasts in log space, timestamps out of order or repeated, vectors that are not finite, zero
or of another dimension than the catalog's, ids that are not unique non-negative integers.

Splits, per series (the project's rule that windows of a split forecast inside it): the last `hold` values
are the test targets, the `hold` before them the validation targets, everything earlier trains; `hold` is a
multiple of the horizon, about 10 % of the shortest series. Validation and test windows read their input
from the values just before their targets, so those two splits are (S, input + hold) arrays as the
synthetic data are; the train split keeps each series' own length (left-padded with NaN, never read).
Vectors are L2-normalised; ids are kept so that every answer names the user's items and users.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ID_SENTINEL = -1  # models.guard answers a refused row with it: no user id may be -1
MAX_LOOKUP = 50_000_000  # user ids are looked up in a dense table of max id + 1 entries (int64)
HOLD_FRACTION = 0.1


class DataError(ValueError):
    """One line: what is wrong with the user's data and what to change."""


@dataclass
class Series:
    uids: list[str]
    values: list[np.ndarray]  # float32, each in time order
    source: str


def _read_table(path: Path):
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path} does not exist")
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except ImportError as e:
            raise DataError(f"{path}: reading parquet needs pyarrow ({e}): pip install pyarrow") from None
    if path.suffix in (".csv", ".txt"):
        return pd.read_csv(path)
    raise DataError(f"{path}: expected .csv or .parquet")


def read_series(path: Path, input_size: int, horizon: int, log_transform: bool = True) -> Series:
    """The long-format series of `path`, checked (see the module docstring)."""
    import pandas as pd

    path = Path(path)
    df = _read_table(path)
    missing = [c for c in ("unique_id", "ds", "y") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: no column {', '.join(map(repr, missing))}; expected long format unique_id, ds, y")
    for col in ("unique_id", "ds", "y"):
        empty = df[col].isna()
        if empty.any():
            row = int(np.argmax(empty.to_numpy()))
            raise DataError(
                f"{path}: missing values: {int(empty.sum())} rows have no {col} (first: row {row + 2} of the file, "
                f"unique_id={df['unique_id'].iloc[row]!r}); fill or drop them"
            )
    y = pd.to_numeric(df["y"], errors="coerce")
    if y.isna().any():
        row = int(np.argmax(y.isna().to_numpy()))
        raise DataError(f"{path}: y is not a number in row {row + 2} of the file ({df['y'].iloc[row]!r})")
    if not np.isfinite(y.to_numpy(np.float64)).all():
        raise DataError(f"{path}: y holds an infinite value; fix or drop it")
    ds = df["ds"]
    if not pd.api.types.is_numeric_dtype(ds):
        try:
            ds = pd.to_datetime(ds)
        except (ValueError, TypeError) as e:
            raise DataError(f"{path}: ds is neither a timestamp nor a number ({e})") from None
    uids, values = [], []
    need = input_size + 3 * horizon
    for uid, idx in df.groupby("unique_id", sort=False).indices.items():
        t = ds.iloc[idx].to_numpy()
        order = np.diff(t)
        zero = np.zeros((), dtype=order.dtype)
        if (order == zero).any():
            at = t[1:][order == zero][0]
            raise DataError(f"{path}: series {uid!r} has duplicate timestamps (ds={at}); keep one row per time")
        if (order < zero).any():
            at = t[1:][order < zero][0]
            raise DataError(
                f"{path}: series {uid!r} is not sorted by time (ds={at} comes after a later one); "
                "sort the rows by unique_id, ds"
            )
        v = y.iloc[idx].to_numpy(np.float32)
        if len(v) < need:
            raise DataError(
                f"{path}: series {uid!r} has {len(v)} values, fewer than input + 3 x horizon = {need} "
                f"(a training window of {input_size} + {horizon}, a validation and a test horizon); "
                "give more history or a smaller INPUT_SIZE / HORIZON"
            )
        if log_transform and (v <= 0).any():
            first = int(np.argmax(v <= 0))
            raise DataError(
                f"{path}: series {uid!r} has {int((v <= 0).sum())} values <= 0 (first at ds={t[first]}): the "
                "reservoir forecasts in log space; shift the series above 0 or train with RESERVOIR_TRANSFORM=identity"
            )
        uids.append(str(uid))
        values.append(v)
    if not uids:
        raise DataError(f"{path}: no rows")
    return Series(uids, values, str(path))


def hold_size(series: Series, input_size: int, horizon: int) -> int:
    """Validation and test targets per series: a multiple of the horizon, ~10 % of the shortest series, and
    never so large that the shortest series keeps no training window."""
    shortest = min(len(v) for v in series.values)
    k = max(1, int(HOLD_FRACTION * shortest) // horizon)
    while k > 1 and shortest - 2 * k * horizon < input_size + horizon:
        k -= 1
    return k * horizon


def split(series: Series, input_size: int, horizon: int) -> dict[str, np.ndarray]:
    """{"train": (S, L_max) left-padded with NaN, "validation" / "test": (S, input + hold)}, float32."""
    hold = hold_size(series, input_size, horizon)
    trains = [v[: len(v) - 2 * hold] for v in series.values]
    width = max(len(t) for t in trains)
    train = np.full((len(trains), width), np.nan, np.float32)
    for i, t in enumerate(trains):
        train[i, width - len(t) :] = t
    validation = np.stack([v[len(v) - 2 * hold - input_size : len(v) - hold] for v in series.values])
    test = np.stack([v[len(v) - hold - input_size :] for v in series.values])
    return {"train": train, "validation": validation.astype(np.float32), "test": test.astype(np.float32)}


# ----------------------------------------------------------------------------- embeddings


def read_vectors(path: Path, kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(vectors (n, D) float32 L2-normalised, ids (n,) int64 or None) of a catalog or a user file."""
    path = Path(path)
    id_names = (f"{'item' if kind == 'catalog' else 'user'}_id", "id")
    ids = None
    if path.suffix == ".npy":
        if not path.is_file():
            raise DataError(f"{path} does not exist")
        vectors = np.load(path, allow_pickle=False)
    else:
        df = _read_table(path)
        id_col = next((c for c in id_names if c in df.columns), None)
        if id_col is None:
            raise DataError(f"{path}: no id column ({' or '.join(id_names)}); a .npy file needs none")
        ids = _ids(df[id_col], path, id_col)
        rest = [c for c in df.columns if c != id_col and not str(c).startswith("Unnamed: ")]  # a saved index
        if len(rest) == 1 and df[rest[0]].dtype == object:  # one column holding a vector per row
            try:
                vectors = np.stack([np.asarray(v, np.float64) for v in df[rest[0]]])
            except ValueError:
                raise DataError(f"{path}: the vectors in column {rest[0]!r} differ in length") from None
        else:
            numeric = df[rest].select_dtypes("number")
            if list(numeric.columns) != rest or not rest:
                raise DataError(f"{path}: columns other than {id_col!r} must be numbers (one per dimension)")
            vectors = numeric.to_numpy(np.float64)
    if vectors.ndim != 2 or vectors.shape[0] < 1 or vectors.shape[1] < 1:
        raise DataError(f"{path}: expected a 2-D array of vectors (rows, dimension), got shape {vectors.shape}")
    vectors = vectors.astype(np.float64)
    if not np.isfinite(vectors).all():
        row = int(np.argmax(~np.isfinite(vectors).all(axis=1)))
        raise DataError(f"{path}: row {row} holds a NaN or infinite value; fix or drop it")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        row = int(np.argmax(norms[:, 0] == 0))
        raise DataError(f"{path}: row {row} is all zeros: a cosine similarity needs a direction")
    return (vectors / norms).astype(np.float32), ids


def _ids(column, path: Path, name: str) -> np.ndarray:
    import pandas as pd

    if not pd.api.types.is_integer_dtype(column):
        raise DataError(
            f"{path}: ids in column {name!r} are {column.dtype}, not integers: the served ids are INT64; "
            "map them to integers (e.g. pandas.factorize) and keep the map"
        )
    ids = column.to_numpy(np.int64)
    if (ids < 0).any():
        raise DataError(f"{path}: id {int(ids[ids < 0][0])} is negative: ids must be >= 0 (-1 means a refused row)")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{path}: id {int(uniq[counts > 1][0])} appears {int(counts.max())} times; ids must be unique")
    return ids


def user_table(catalog: np.ndarray, n_users: int, seed: int = 0) -> np.ndarray:
    """Users when none are given: each a normalised mix of two catalog items and a little noise, so the
    recommend ensemble answers with the catalog's own neighbourhoods."""
    rng = np.random.default_rng([seed, 99])
    a, b = rng.integers(0, len(catalog), n_users), rng.integers(0, len(catalog), n_users)
    mix = catalog[a] + rng.uniform(0.0, 0.5, (n_users, 1)).astype(np.float32) * catalog[b]
    mix += 0.3 / np.sqrt(catalog.shape[1]) * rng.standard_normal(mix.shape).astype(np.float32)
    return (mix / np.linalg.norm(mix, axis=1, keepdims=True)).astype(np.float32)


def check_users(catalog: np.ndarray, users: np.ndarray, user_ids: np.ndarray | None, path: Path) -> None:
    if users.shape[1] != catalog.shape[1]:
        raise DataError(
            f"{path}: user vectors have dimension {users.shape[1]}, the catalog's have {catalog.shape[1]}: "
            "recommend feeds a user's vector to the catalog search, so they must match"
        )
    if user_ids is not None and int(user_ids.max()) + 1 > MAX_LOOKUP:
        raise DataError(
            f"{path}: user ids reach {int(user_ids.max())}: the served id lookup holds max id + 1 entries "
            f"(at most {MAX_LOOKUP:,}); renumber the users"
        )


# ----------------------------------------------------------------------------- documents


def _read_docs_table(path: Path):
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path} does not exist")
    if path.suffix == ".jsonl":
        try:
            return pd.read_json(path, lines=True, dtype=False)
        except ValueError as e:
            raise DataError(f"{path}: not one JSON object per line ({e})") from None
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype={"text": object}, keep_default_na=False)
    if path.suffix == ".parquet":
        return _read_table(path)
    raise DataError(f"{path}: expected .parquet, .csv or .jsonl")


def read_documents(path: Path) -> tuple[np.ndarray, list[str]]:
    """(ids (n,) int64, texts) of a documents file: an integer `id` column and a `text` column, one document
    per row (.parquet, .csv or .jsonl). Each problem is one line naming the row (0-based data rows)."""
    path = Path(path)
    df = _read_docs_table(path)
    missing = [c for c in ("id", "text") if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: no column {', '.join(map(repr, missing))}; expected an integer `id` and a `text` per document "
            f"(columns: {', '.join(map(str, df.columns)) or 'none'})"
        )
    if len(df) == 0:
        raise DataError(f"{path}: no documents")
    ids = []
    for row, value in enumerate(df["id"].tolist()):
        if isinstance(value, bool) or not (
            isinstance(value, int | np.integer)
            or (isinstance(value, float | np.floating) and float(value).is_integer())
        ):
            raise DataError(f"{path}: row {row}: id {value!r} is not an integer (map ids to integers and keep the map)")
        if int(value) < 0:
            raise DataError(
                f"{path}: row {row}: id {int(value)} is negative: ids must be >= 0 (-1 means a refused row)"
            )
        ids.append(int(value))
    seen: dict[int, int] = {}
    for row, i in enumerate(ids):
        if i in seen:
            raise DataError(f"{path}: row {row}: id {i} repeats row {seen[i]}; ids must be unique")
        seen[i] = row
    texts = []
    for row, value in enumerate(df["text"].tolist()):
        if value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip():
            raise DataError(f"{path}: row {row} (id {ids[row]}): the text is empty")
        if not isinstance(value, str):
            raise DataError(f"{path}: row {row} (id {ids[row]}): the text is a {type(value).__name__}, not a string")
        texts.append(value)
    return np.asarray(ids, np.int64), texts
