"""`python -m clients demo --repo REPO [--artifacts A]`: the whole serving path in one command.

Starts the local Triton (cpu target) on free ports, calls every model and the three ensembles over gRPC and
over HTTP, checks that both protocols agree and that each ensemble equals its steps run by hand, prints a
forecast next to its actuals from the test split, the top-k of a user and of a text search, streams a short
series through the stateful `reservoir_stream` with `clients.stream` (skipped, and said so, when that module is
missing), and stops the server. On the real profile (`make demo DATA=real`) the search answers with MovieLens
titles and the forecasters' and the recommender's real-data scores from the train report are printed.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from clients.cli import catalog_items, forecast_table, render_search
from clients.client import Client, ranges_from_repository
from common.cli import CliError
from models import data, real_data, spec
from serving.server import ServerError, TritonServer, free_port

log = logging.getLogger("clients.demo")

RUN_DIR = Path("build/clients-demo")
STREAM_TICKS = spec.INPUT_SIZE  # one window's worth, as the reservoir saw in training
STREAM_SEQUENCE_ID = 4242


def _rule(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 72 - len(title)))


def _call_everything(
    client: Client, windows: np.ndarray, queries: np.ndarray, users: np.ndarray, texts: list[str]
) -> dict:
    r: dict = {}
    r["nhits"] = client.nhits(windows)
    r["reservoir"] = client.reservoir(windows)
    r["forecast_blend"] = client.forecast_blend(r["nhits"].values, r["reservoir"].values)
    r["forecast"] = client.forecast(windows)
    r["similarity"] = client.similarity(queries)
    r["user_embedding"] = client.user_embedding(users)
    r["recommend"] = client.recommend(users)
    r["similarity_of_users"] = client.similarity(r["user_embedding"].values)
    r["search"] = client.search(texts)
    r["tokenizer"] = client.tokenizer(texts)
    r["text_encoder"] = client.text_encoder(r["tokenizer"].ids, r["tokenizer"].mask)
    r["similarity_of_texts"] = client.similarity(r["text_encoder"].values)
    return r


def _arrays(result) -> list[np.ndarray]:
    return [v for v in vars(result).values() if isinstance(v, np.ndarray)]


def _stream(server: TritonServer, series: np.ndarray, window_forecast: np.ndarray) -> None:
    _rule(f"reservoir_stream: {STREAM_TICKS} ticks of test asset 0, one request each (clients.stream)")
    try:
        from clients.stream import StreamClient
    except ImportError as exc:
        print(f"skipped: clients.stream is not available yet ({exc})")
        return
    client = StreamClient(server.grpc_url, model=spec.STREAM.name, protocol="grpc")
    start = time.perf_counter()
    try:
        client.open(STREAM_SEQUENCE_ID)
        for tick in series[:STREAM_TICKS]:
            last = client.send(float(tick))
        client.close()
    finally:
        shutdown = getattr(client, "shutdown", None)
        if shutdown is not None:
            shutdown()
    elapsed = time.perf_counter() - start
    actual = series[STREAM_TICKS : STREAM_TICKS + spec.HORIZON]
    print(f"{STREAM_TICKS} ticks in {elapsed * 1e3:.0f} ms ({elapsed / STREAM_TICKS * 1e3:.1f} ms per tick)")
    print(f"forecast after tick {STREAM_TICKS} vs what came next:")
    print(forecast_table({"stream": last, "actual": actual}))
    gap = float(np.abs(last - window_forecast).max())
    print(f"streamed state = reservoir model on the same {STREAM_TICKS}-tick window: max |difference| = {gap:.3g}")


def _real_scores(artifacts: Path) -> None:
    """The real profile's scores from the train report (models.train --data real)."""
    import json

    report = json.loads((artifacts / "reports" / "train.json").read_text())
    real = report["real"]
    _rule("real data: test MAE / sMAPE per series (train report), against seasonal naive")
    models = list(next(iter(real["test_by_series"].values())))
    print(f"{'series':<11}" + "".join(f"{m:>22}" for m in models))
    for name, row in real["test_by_series"].items():
        print(f"{name:<11}" + "".join(f"{row[m]['mae']:>12.4g} / {row[m]['smape']:5.2f}%" for m in models))
    loo = real["leave_one_out"]
    print(
        f"MovieLens leave-one-out ({loo['users']} users with >= {loo['min_liked']} liked movies): "
        f"hit rate@{loo['k']} {loo['hit_rate']:.4f} vs popularity {loo['popularity_hit_rate']:.4f}"
    )


def demo(repo: Path, artifacts: Path, rows: int = 3) -> int:
    repo, artifacts = Path(repo), Path(artifacts)
    x, y = data.load_windows(artifacts, "test")
    series = data.load_series(artifacts, "test")
    per_asset = len(x) // series.shape[0]
    pick = (np.arange(rows) * per_asset) % len(x)  # one window from each of `rows` assets
    windows, actual = x[pick], y[pick]
    queries = data.load_queries(artifacts, "test", rows)
    users = data.load_user_ids(artifacts, "test", rows)
    ranges = ranges_from_repository(repo)
    texts = list(real_data.QUERIES[: max(rows, 2)])
    items = catalog_items(artifacts)

    server = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), run_dir=RUN_DIR)
    print(f"starting Triton on {repo} (log: {server.log_path}) ...")
    try:
        server.start(timeout=300)
    except ServerError as exc:
        print(f"error: {exc}")
        return 1
    try:
        print(f"ready: gRPC {server.grpc_url}, HTTP {server.http_url}")
        results = {}
        for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
            _rule(f"every model and ensemble over {protocol}")
            with Client(url, protocol=protocol, timeout=60.0, ranges=ranges) as client:
                results[protocol] = _call_everything(client, windows, queries, users, texts)
            for name, res in results[protocol].items():
                shapes = ", ".join(str(a.shape) for a in _arrays(res))
                print(f"{name:<20} {shapes:<28} {res.latency_s * 1e3:8.1f} ms  {res.endpoint}")

        _rule("checks")
        worst = max(
            float(np.abs(a.astype(np.float64) - b).max())
            for name in results["grpc"]
            for a, b in zip(_arrays(results["grpc"][name]), _arrays(results["http"][name]), strict=True)
        )
        print(f"gRPC and HTTP agree on every output: max |difference| = {worst:.3g}")
        g = results["grpc"]
        blend_gap = float(np.abs(g["forecast"].values - g["forecast_blend"].values).max())
        parts_gap = max(
            float(np.abs(g["forecast"].nhits - g["nhits"].values).max()),
            float(np.abs(g["forecast"].reservoir - g["reservoir"].values).max()),
        )
        print(
            f"forecast ensemble = nhits, reservoir, forecast_blend by hand: max |difference| = {max(blend_gap, parts_gap):.3g}"
        )
        same_ids = np.array_equal(g["recommend"].ids, g["similarity_of_users"].ids)
        print(f"recommend ensemble = similarity(user_embedding(user)) by hand: ids identical = {same_ids}")
        same_text = np.array_equal(g["search"].ids, g["similarity_of_texts"].ids)
        print(f"search ensemble = similarity(text_encoder(tokenizer(text))) by hand: ids identical = {same_text}")

        _rule(f"forecast for test window #{pick[0]} (asset {pick[0] // per_asset}) next to what happened")
        f = g["forecast"]
        print(
            forecast_table(
                {"actual": actual[0], "nhits": f.nhits[0], "reservoir": f.reservoir[0], "blend": f.values[0]}
            )
        )
        for name, values in (("nhits", f.nhits), ("reservoir", f.reservoir), ("blend", f.values)):
            mae = np.abs(values - actual).mean()
            print(f"MAE over {rows} asset(s), {name:<9}: {mae:.3f}")

        _rule(f"top-{spec.TOP_K} catalog items for user {int(users[0])} (recommend ensemble)")
        top = g["recommend"]
        print(f"{'rank':>4} {'item id':>9} {'cosine':>8}")
        for r, (item, score) in enumerate(zip(top.ids[0], top.scores[0], strict=True)):
            print(f"{r + 1:>4} {int(item):>9} {score:>8.4f}")

        _rule("text search (search ensemble: tokenizer -> text_encoder -> similarity)")
        print(render_search(g["search"], texts, items))
        if items is not None and not items.get("documents"):  # the real profile (DOCS=: the user's documents)
            _real_scores(artifacts)

        _stream(server, series[0], g["reservoir"].values[0])  # window #0 is the first 168 ticks of asset 0
    finally:
        server.stop()
        print("\nTriton stopped")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """`python -m clients demo`: the command line's parsed arguments -> demo()."""
    if not args.repo:
        raise CliError("demo needs --repo: the model repository to serve")
    return demo(args.repo, args.artifacts, rows=args.rows)
