"""Data the project makes itself: multi-asset hourly series, Mackey-Glass, embeddings.

Everything is a deterministic function of a seed and is persisted under
`<artifacts>/data/` so that export, calibration and the tests reload exactly the
same numbers. The hourly series are split by time (train | validation | test,
disjoint, in that order); windows are cut inside one split only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models import spec

log = logging.getLogger(__name__)

DATA_DIR = "data"
SPLITS = ("train", "validation", "test")
WINDOW_STRIDE = 24  # windows handed out by load_windows start every day
WEEK = 24 * 7


@dataclass(frozen=True)
class SeriesConfig:
    n_series: int = 128
    length: int = 26 * WEEK  # 26 weeks of hourly ticks
    train_weeks: int = 18
    validation_weeks: int = 4  # the test split gets the rest (4 weeks)
    seed: int = 0


def split_name(split: str) -> str:
    aliases = {"val": "validation", "valid": "validation"}
    split = aliases.get(split, split)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    return split


# ---------------------------------------------------------------- hourly series


def make_series(cfg: SeriesConfig) -> np.ndarray:
    """(S, L) float32 positive series: exp of trend + daily/weekly seasonality + AR(1) + regimes + Student-t noise."""
    rng = np.random.default_rng(cfg.seed)
    s, n = cfg.n_series, cfg.length
    t = np.arange(n, dtype=np.float64)

    level = rng.uniform(np.log(20.0), np.log(500.0), size=(s, 1))
    trend = rng.normal(0.0, 4e-5, size=(s, 1)) * t  # log-drift per hour

    def harmonics(period: int, n_harm: int, amp: np.ndarray) -> np.ndarray:
        out = np.zeros((s, n))
        for k in range(1, n_harm + 1):
            phase = rng.uniform(0, 2 * np.pi, size=(s, 1))
            weight = rng.uniform(0.3, 1.0, size=(s, 1)) / k
            out += weight * np.sin(2 * np.pi * k * t / period + phase)
        return amp * out / np.abs(out).max(axis=1, keepdims=True)

    daily = harmonics(24, 3, rng.uniform(0.05, 0.25, size=(s, 1)))
    weekly = harmonics(WEEK, 2, rng.uniform(0.03, 0.15, size=(s, 1)))
    weekend = ((t // 24) % 7 >= 5).astype(np.float64) * rng.uniform(-0.10, 0.05, size=(s, 1))

    # Regime changes: a few change points per series shift the level, the daily amplitude and the volatility.
    level_shift = np.zeros((s, n))
    season_gain = np.ones((s, n))
    vol_gain = np.ones((s, n))
    for i in range(s):
        for cp in np.sort(rng.integers(WEEK, n, size=rng.poisson(3))):
            level_shift[i, cp:] += rng.normal(0.0, 0.15)
            season_gain[i, cp:] = rng.uniform(0.7, 1.3)
            vol_gain[i, cp:] = rng.uniform(0.7, 1.5)

    # Slow AR(1) deviation (predictable for a few hours, then gone).
    phi = rng.uniform(0.85, 0.97, size=s)
    innov = rng.normal(0.0, 1.0, size=(s, n)) * rng.uniform(0.005, 0.015, size=(s, 1))
    ar = np.zeros((s, n))
    for k in range(1, n):
        ar[:, k] = phi * ar[:, k - 1] + innov[:, k]

    noise = rng.standard_t(3, size=(s, n)) * rng.uniform(0.01, 0.04, size=(s, 1)) * vol_gain
    log_y = level + trend + level_shift + season_gain * (daily + weekend) + weekly + ar + noise
    return np.exp(log_y).astype(np.float32)


def split_series(series: np.ndarray, cfg: SeriesConfig) -> dict[str, np.ndarray]:
    a = cfg.train_weeks * WEEK
    b = a + cfg.validation_weeks * WEEK
    return {"train": series[:, :a], "validation": series[:, a:b], "test": series[:, b:]}


def windows_from_series(series: np.ndarray, stride: int = WINDOW_STRIDE) -> tuple[np.ndarray, np.ndarray]:
    """Cut (S, L) series into X (N, INPUT_SIZE) and Y (N, HORIZON), series-major, `stride` apart. Windows that
    reach into a NaN (a user's series shorter than the longest, models.userdata; the real profile's train split
    before a shorter series starts) are left out."""
    span = spec.INPUT_SIZE + spec.HORIZON
    starts = np.arange(0, series.shape[1] - span + 1, stride)
    idx = starts[:, None] + np.arange(span)[None, :]  # (W, span)
    win = series[:, idx].reshape(-1, span)  # (S*W, span)
    if not np.isfinite(win).all():
        win = win[np.isfinite(win).all(axis=1)]
    x = np.ascontiguousarray(win[:, : spec.INPUT_SIZE], dtype=np.float32)
    y = np.ascontiguousarray(win[:, spec.INPUT_SIZE :], dtype=np.float32)
    return x, y


def seasonal_naive(x: np.ndarray) -> np.ndarray:
    """Repeat the last day (24 values, or the whole window if shorter) of each window over the horizon."""
    season = min(24, x.shape[1])
    return np.tile(x[:, -season:], (1, spec.HORIZON // season + 1))[:, : spec.HORIZON]


# ---------------------------------------------------------------- Mackey-Glass


def mackey_glass(
    n: int = 4000, tau: int = 17, beta: float = 0.2, gamma: float = 0.1, power: int = 10, dt: float = 0.1, seed: int = 0
) -> np.ndarray:
    """Mackey-Glass delay equation dx/dt = beta x(t-tau)/(1+x(t-tau)^power) - gamma x(t), Euler steps of dt,
    sampled every 1 time unit after a 1000-unit transient."""
    rng = np.random.default_rng(seed)
    per = int(round(1 / dt))
    delay = int(round(tau / dt))
    total = (n + 1000) * per
    x = np.empty(total + delay)
    x[: delay + 1] = 1.2 + 0.01 * rng.standard_normal(delay + 1)
    for k in range(delay, total + delay - 1):
        xd = x[k - delay]
        x[k + 1] = x[k] + dt * (beta * xd / (1.0 + xd**power) - gamma * x[k])
    return x[delay + 1000 * per :: per][:n].astype(np.float32)


# ---------------------------------------------------------------- embeddings


def _normalize(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def make_embeddings(
    n_items: int, n_users: int, dim: int = spec.EMBED_DIM, n_clusters: int = 128, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised catalog (n_items, dim) and users (n_users, dim) with shared cluster structure."""
    rng = np.random.default_rng(seed + 1_000)
    centers = _normalize(rng.standard_normal((n_clusters, dim), dtype=np.float32))
    noise = np.float32(1.0 / np.sqrt(dim))  # a noise vector of norm ~1 per unit of this scale

    item_cluster = rng.integers(0, n_clusters, size=n_items)
    catalog = centers[item_cluster] + 0.8 * noise * rng.standard_normal((n_items, dim), dtype=np.float32)

    # Users like one main cluster and, less, a second one.
    main = rng.integers(0, n_clusters, size=n_users)
    second = rng.integers(0, n_clusters, size=n_users)
    mix = rng.uniform(0.0, 0.5, size=(n_users, 1)).astype(np.float32)
    users = centers[main] + mix * centers[second]
    users += 0.6 * noise * rng.standard_normal((n_users, dim), dtype=np.float32)
    return _normalize(catalog), _normalize(users)


QUERY_SEEDS = {"train": 11, "validation": 12, "test": 13}  # disjoint streams: calibration never sees test queries


def sample_user_ids(n_users: int, split: str, n: int, seed: int = 0) -> np.ndarray:
    """(n,) int64 valid user ids, a separate random stream per split."""
    rng = np.random.default_rng([seed, QUERY_SEEDS[split_name(split)]])
    return rng.integers(0, n_users, size=n).astype(np.int64)


def queries_from_users(users: np.ndarray, split: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Held-out queries: a user's vector plus fresh noise (a session drifting from the profile), L2-normalised."""
    ids = sample_user_ids(users.shape[0], split, n, seed)
    rng = np.random.default_rng([seed, QUERY_SEEDS[split_name(split)], 1])
    q = users[ids] + 0.4 / np.sqrt(users.shape[1]) * rng.standard_normal((n, users.shape[1]), dtype=np.float32)
    return _normalize(q), ids


# ---------------------------------------------------------------- persistence


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def save_all(
    artifacts: Path,
    cfg: SeriesConfig | dict,
    splits: dict[str, np.ndarray],
    mg: np.ndarray,
    catalog: np.ndarray,
    users: np.ndarray,
    ids: dict[str, np.ndarray] | None = None,
    stride: int = WINDOW_STRIDE,
    extra: dict | None = None,
) -> Path:
    """Persist the data of one training run. `cfg`: the SeriesConfig of the synthetic (or real) series, or what
    describes a user's (models.userdata); `ids`: the user's item_ids / user_ids, when given; `extra`: manifest keys
    (the profile: "data" synthetic / real / yours)."""
    out = Path(artifacts) / DATA_DIR
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("item_ids.npy", "user_ids.npy"):
        (out / stale).unlink(missing_ok=True)
    series = asdict(cfg) if isinstance(cfg, SeriesConfig) else dict(cfg)
    manifest: dict = {
        "data": "synthetic",
        "series": series,
        "window_stride": stride,
        "dims": asdict(spec.DIMS),
        "files": {},
    }
    manifest |= extra or {}
    arrays = {f"series_{k}": v for k, v in splits.items()} | {"mackey_glass": mg, "catalog": catalog, "users": users}
    arrays |= {k: v for k, v in (ids or {}).items() if v is not None}
    for name, arr in arrays.items():
        np.save(out / f"{name}.npy", arr)
        manifest["files"][f"{name}.npy"] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "sha256_16": _sha(arr)}
    for split, s in splits.items():
        manifest[f"windows_{split}"] = int(windows_from_series(s, stride)[0].shape[0])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("data written to %s", out)
    return out


def _data_dir(artifacts: Path) -> Path:
    d = Path(artifacts) / DATA_DIR
    if not (d / "manifest.json").exists():
        raise FileNotFoundError(f"no data in {d}: run `python -m models.train --out {artifacts}` first")
    return d


def manifest(artifacts: Path) -> dict:
    return json.loads((_data_dir(artifacts) / "manifest.json").read_text())


def load_series(artifacts: Path, split: str) -> np.ndarray:
    """(S, L) float32 hourly series of one split."""
    return np.load(_data_dir(artifacts) / f"series_{split_name(split)}.npy")


def load_windows(artifacts: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """X (N, INPUT_SIZE) float32 and Y (N, HORIZON) float32 of one split, windows the manifest's stride apart
    (WINDOW_STRIDE for the synthetic series, the horizon for a user's)."""
    return windows_from_series(load_series(artifacts, split), manifest(artifacts).get("window_stride", WINDOW_STRIDE))


def load_mackey_glass(artifacts: Path) -> np.ndarray:
    return np.load(_data_dir(artifacts) / "mackey_glass.npy")


def load_embeddings(artifacts: Path, mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(catalog (n_items, EMBED_DIM), users (n_users, EMBED_DIM)), float32, L2-normalised."""
    d = _data_dir(artifacts)
    mode = "r" if mmap else None
    return np.load(d / "catalog.npy", mmap_mode=mode), np.load(d / "users.npy", mmap_mode=mode)


def load_ids(artifacts: Path, kind: str) -> np.ndarray | None:
    """The user's own ids of the catalog items (kind "item") or users ("user"), row order; None: row numbers."""
    path = _data_dir(artifacts) / f"{kind}_ids.npy"
    return np.load(path) if path.is_file() else None


def load_user_ids(artifacts: Path, split: str, n: int) -> np.ndarray:
    """(n,) int64 valid user ids for `split` (the user's own ids where they gave them)."""
    _, users = load_embeddings(artifacts, mmap=True)
    rows = sample_user_ids(users.shape[0], split, n, seed=manifest(artifacts)["series"]["seed"])
    ids = load_ids(artifacts, "user")
    return rows if ids is None else ids[rows]


def load_queries(artifacts: Path, split: str, n: int) -> np.ndarray:
    """(n, EMBED_DIM) float32 queries: noisy user vectors, a separate random stream per split."""
    _, users = load_embeddings(artifacts, mmap=True)
    seed = manifest(artifacts)["series"]["seed"]
    return queries_from_users(users, split, n, seed=seed)[0]


# ---------------------------------------------------------------- texts (the text encoder's data)

TEXTS = "texts.json"


def save_texts(artifacts: Path, texts: dict) -> Path:
    """`texts`: {"texts": [...], "split": [...], and for a real catalog "movie_ids", "titles", "user_ids"}."""
    path = Path(artifacts) / DATA_DIR / TEXTS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(texts) + "\n")
    return path


def _texts(artifacts: Path) -> dict:
    path = Path(artifacts) / DATA_DIR / TEXTS
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: run `python -m models.train --out {artifacts}` first")
    return json.loads(path.read_text())


def load_texts(artifacts: Path, split: str) -> list[str]:
    """Movie texts ("title (year). genres") of one split: the encoder's calibration (train) and checks (test)."""
    t = _texts(artifacts)
    split = split_name(split)
    return [x for x, s in zip(t["texts"], t["split"], strict=True) if s == split]


def load_catalog_items(artifacts: Path) -> dict | None:
    """Real profile: catalog row -> MovieLens movieId, title, text; user row -> userId. Documents (make export
    DOCS=...): "documents" (the file), "doc_ids", "doc_texts". None for a synthetic catalog."""
    t = _texts(artifacts)
    return t if t.get("catalog") else None
