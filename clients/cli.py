"""Command line: one subcommand per model and ensemble, `health`, and `demo`.

    python -m clients nhits --url 127.0.0.1:8001                   # first test windows of artifacts/ (default data)
    python -m clients forecast --input windows.csv --json          # rows of 168 values, CSV or .npy
    python -m clients forecast_blend --nhits a.npy --reservoir b.npy
    python -m clients similarity --input queries.npy --protocol http --url 127.0.0.1:8000
    python -m clients recommend --ids 3,14,15 --repo model_repository   # --repo: id range from the ONNX metadata
    python -m clients search "space adventure with robots"        # titles from artifacts/ (make export DATA=real)
    python -m clients tokenizer "a text" "another one"
    python -m clients health --url gpu-host:8001 --url 127.0.0.1:8001
    python -m clients demo --repo model_repository [--artifacts artifacts]

Without --input the inputs come from the project's data (`--artifacts`, default artifacts/): test-split
windows (shown next to their actuals), test queries, test user ids. Errors are one line on stderr, exit 1;
usage errors exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clients.client import Client, op_for, ranges_from_repository
from clients.errors import ClientError
from clients.results import Answer, Embedding, EnsembleForecast, Forecast, Tokens, TopK
from common.cli import CliError
from models import spec

log = logging.getLogger("clients.cli")

DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
WINDOW_MODELS = ("nhits", "reservoir", "forecast")
ID_MODELS = ("user_embedding", "recommend")
MAX_COLUMNS = 6  # batch rows shown side by side in a forecast table (--json prints everything)


# ---------------------------------------------------------------------------------- inputs


def read_array(path: Path, dtype: str) -> np.ndarray:
    """A 2-D array from .npy or CSV (comma-separated numbers, '#' comments), cast to `dtype`."""
    if not path.is_file():
        raise CliError(f"{path} does not exist")
    try:
        if path.suffix == ".npy":
            a = np.load(path, allow_pickle=False)
        else:
            a = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64, comments="#")
    except (ValueError, OSError) as exc:
        raise CliError(
            f"cannot read {path} as {'.npy' if path.suffix == '.npy' else 'CSV of numbers'}: {exc}"
        ) from None
    if a.dtype.kind not in "fiu":
        raise CliError(f"{path} holds {a.dtype} values, expected numbers")
    if np.dtype(dtype).kind in "iu":
        if a.dtype.kind == "f" and not np.array_equal(a[np.isfinite(a)], np.round(a[np.isfinite(a)])):
            raise CliError(f"{path} holds non-integer values where ids are expected")
        if not np.isfinite(a).all():
            raise CliError(f"{path} holds NaN or Inf where ids are expected")
    return a.astype(dtype)


def parse_ids(text: str) -> np.ndarray:
    try:
        return np.array([int(v) for v in text.replace(" ", "").split(",") if v], dtype=np.int64)
    except ValueError:
        raise CliError(f"--ids {text!r}: expected comma-separated integers, e.g. 3,14,15") from None


def _data(args: argparse.Namespace):
    from models import data

    if not (Path(args.artifacts) / data.DATA_DIR / "manifest.json").is_file():
        raise CliError(
            f"no input given and no project data under {args.artifacts}/data: pass --input FILE "
            "(or --artifacts DIR; `make export` creates artifacts/)"
        )
    return data


def default_windows(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """`--rows` test windows from different assets, and their actual next 24 hours."""
    data = _data(args)
    x, y = data.load_windows(args.artifacts, "test")
    per_asset = max(1, len(x) // data.load_series(args.artifacts, "test").shape[0])
    rows = (np.arange(args.rows) * per_asset) % len(x)
    return x[rows], y[rows]


def window_input(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray | None]:
    if args.input is None:
        return default_windows(args)
    a = read_array(args.input, "float32")
    return (a.reshape(1, -1) if a.ndim == 1 else a), None


def query_input(args: argparse.Namespace) -> np.ndarray:
    if args.input is None:
        return _data(args).load_queries(args.artifacts, "test", args.rows)
    a = read_array(args.input, "float32")
    return a.reshape(1, -1) if a.ndim == 1 else a


def id_input(args: argparse.Namespace) -> np.ndarray:
    if args.ids is not None and args.input is not None:
        raise CliError("give either --ids or --input, not both")
    if args.ids is not None:
        ids = parse_ids(args.ids)
    elif args.input is not None:
        ids = read_array(args.input, "int64").reshape(-1)
    else:
        ids = _data(args).load_user_ids(args.artifacts, "test", args.rows)
    return ids.reshape(-1, 1)


# ---------------------------------------------------------------------------------- output


def forecast_table(columns: dict[str, np.ndarray]) -> str:
    """Hours down, one column per series: {'#0 forecast': (24,), '#0 actual': (24,), ...}."""
    names = list(columns)
    width = max(10, *(len(n) + 1 for n in names))
    lines = ["hour " + "".join(f"{n:>{width}}" for n in names)]
    for h in range(spec.HORIZON):
        lines.append(f"{'+' + str(h + 1):>4} " + "".join(f"{columns[n][h]:>{width}.3f}" for n in names))
    return "\n".join(lines)


def header(result: Answer) -> str:
    return (
        f"{result.model}: {len(result)} row(s) from {result.endpoint} "
        f"in {result.latency_s * 1e3:.1f} ms ({result.attempts} attempt(s))"
    )


def render(result: Answer, actual: np.ndarray | None = None) -> str:
    lines = [header(result)]
    if isinstance(result, Forecast):
        cols: dict[str, np.ndarray] = {}
        for i in range(min(len(result), MAX_COLUMNS)):
            if isinstance(result, EnsembleForecast):
                cols[f"#{i} nhits"] = result.nhits[i]
                cols[f"#{i} reservoir"] = result.reservoir[i]
            cols[f"#{i} forecast"] = result.values[i]
            if actual is not None:
                cols[f"#{i} actual"] = actual[i]
        lines.append(forecast_table(cols))
        if len(result) > MAX_COLUMNS:
            lines.append(f"({len(result) - MAX_COLUMNS} more row(s): use --json)")
        if actual is not None:
            mae = np.abs(result.values - actual).mean(axis=1)
            lines.append("MAE per row: " + "  ".join(f"#{i} {m:.3f}" for i, m in enumerate(mae)))
    elif isinstance(result, TopK):
        lines.append(f"{'row':>4} {'rank':>5} {'item id':>9} {'score':>8}")
        for i in range(len(result)):
            for r, (item, score) in enumerate(zip(result.ids[i], result.scores[i], strict=True)):
                lines.append(f"{i:>4} {r + 1:>5} {int(item):>9} {score:>8.4f}")
    elif isinstance(result, Embedding):
        lines.append(f"{'row':>4} {'norm':>7}  first values")
        for i, v in enumerate(result.values):
            lines.append(f"{i:>4} {np.linalg.norm(v):>7.4f}  " + " ".join(f"{x:+.4f}" for x in v[:6]) + " ...")
    return "\n".join(lines)


def catalog_items(artifacts: Path) -> dict | None:
    """Catalog row -> MovieLens movieId and title, when `artifacts` holds the real profile's data."""
    from models import data

    try:
        return data.load_catalog_items(artifacts)
    except (FileNotFoundError, ValueError):
        return None


def render_search(result: TopK, texts: list[str], items: dict | None) -> str:
    lines = [header(result)]
    if items is None:
        lines.append(
            "(no text catalog under --artifacts: ids are catalog rows; `make export DATA=real` for MovieLens titles, "
            "`make export DOCS=docs.parquet` for your documents)"
        )
    docs = dict(zip(items["doc_ids"], items["doc_texts"], strict=True)) if items and items.get("documents") else None
    for i, text in enumerate(texts):
        lines.append(f"\n{text!r}")
        for r, (row, score) in enumerate(zip(result.ids[i], result.scores[i], strict=True)):
            if docs is not None:  # make export DOCS=...: the served ids are the documents' own ids
                doc = docs.get(int(row), "")
                lines.append(
                    f"{r + 1:>4}. {score:7.4f}  [id {int(row)}] {doc[:100] + ('...' if len(doc) > 100 else '')}"
                )
            elif items is None or row < 0:
                lines.append(f"{r + 1:>4}. {score:7.4f}  row {int(row)}")
            else:
                movie, title = items["movie_ids"][row], items["titles"][row]
                lines.append(
                    f"{r + 1:>4}. {score:7.4f}  {title} ({items['genres'][row].replace('|', ', ')})  [movieId {movie}]"
                )
    return "\n".join(lines)


def as_json(result: Answer, actual: np.ndarray | None = None) -> str:
    out: dict[str, Any] = {
        "model": result.model,
        "endpoint": result.endpoint,
        "attempts": result.attempts,
        "latency_ms": round(result.latency_s * 1e3, 3),
    }
    for key, value in vars(result).items():
        if isinstance(value, np.ndarray):
            out[key] = value.tolist()
    if actual is not None:
        out["actual"] = actual.tolist()
    return json.dumps(out)


# ---------------------------------------------------------------------------------- commands


def client_for(args: argparse.Namespace) -> Client:
    urls = args.url or [f"127.0.0.1:{DEFAULT_PORTS[args.protocol]}"]
    ranges = {}
    if args.repo is not None:
        try:
            ranges = ranges_from_repository(args.repo)
        except (FileNotFoundError, ValueError) as exc:
            raise CliError(str(exc)) from None
    return Client(
        urls,
        protocol=args.protocol,
        timeout=args.timeout,
        retries=args.retries,
        n_users=args.n_users,
        ranges=ranges,
    )


def run_model(args: argparse.Namespace) -> int:
    model = args.command.replace("-", "_")
    actual = None
    inputs: tuple = ()
    if model in WINDOW_MODELS:
        window, actual = window_input(args)
        inputs = (window,)
    elif model == "similarity":
        inputs = (query_input(args),)
    elif model in ID_MODELS:
        inputs = (id_input(args),)
    elif model in ("search", "tokenizer"):
        inputs = (list(args.texts),)
    else:  # forecast_blend
        if (args.nhits is None) != (args.reservoir is None):
            raise CliError("give both --nhits and --reservoir, or neither")
    with client_for(args) as client:
        if model == "forecast_blend":
            if args.nhits is not None:
                inputs = (read_array(args.nhits, "float32"), read_array(args.reservoir, "float32"))
            else:  # the blend of what the two models forecast for the default windows
                window, actual = default_windows(args)
                inputs = (client.nhits(window).values, client.reservoir(window).values)
        result = client.call(op_for(model), *inputs)  # checked before anything is sent
    if args.json:
        print(as_json(result, actual))
    elif model == "search":
        print(render_search(result, list(args.texts), catalog_items(args.artifacts)))
    elif isinstance(result, Tokens):
        print(header(result))
        for text, ids, mask in zip(args.texts, result.ids, result.mask, strict=True):
            print(f"{text!r}: {int(mask.sum())} tokens {ids[: int(mask.sum())].tolist()}")
    else:
        print(render(result, actual))
    return 0


def run_health(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        status = client.health(timeout=min(args.timeout, 5.0))
    if args.json:
        print(json.dumps(status))
    else:
        for url, ok in status.items():
            print(f"{url:<32} {'ready' if ok else 'NOT READY'}")
    return 0 if all(status.values()) else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", action="append", help="host:port (repeat for failover, in order); default 127.0.0.1:8001"
    )
    common.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    common.add_argument("--timeout", type=float, default=30.0, help="deadline of a call in seconds (default 30)")
    common.add_argument("--retries", type=int, default=2, help="extra rounds over the endpoints (default 2)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    common.add_argument("--artifacts", type=Path, default=spec.ARTIFACTS, help="project data for default inputs")
    common.add_argument("--rows", type=int, default=3, help="rows of default data to send (default 3)")
    common.add_argument("--repo", type=Path, help="model repository: valid id range from user_embedding's ONNX")
    common.add_argument("--n-users", type=int, help="user table size: ids must be in [0, N)")
    common.add_argument("-v", "--verbose", action="store_true")

    p = argparse.ArgumentParser(prog="python -m clients", description="Call the served models and ensembles.")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    for name in WINDOW_MODELS:
        kind = "ensemble: nhits + reservoir -> forecast_blend" if name == "forecast" else "model"
        s = sub.add_parser(name, parents=[common], help=f"{name} ({kind}): windows of 168 -> 24-hour forecasts")
        s.add_argument("--input", type=Path, help="CSV or .npy, one window of 168 values per row")
    s = sub.add_parser(
        "forecast_blend", aliases=["forecast-blend"], parents=[common], help="blend two 24-hour forecasts"
    )
    s.add_argument("--nhits", type=Path, help="CSV or .npy of nhits forecasts (rows of 24)")
    s.add_argument("--reservoir", type=Path, help="CSV or .npy of reservoir forecasts (rows of 24)")
    s = sub.add_parser("similarity", parents=[common], help="top-10 catalog items for query embeddings of 384")
    s.add_argument("--input", type=Path, help="CSV or .npy, one query of 384 values per row")
    for name, what in (("user_embedding", "embedding of users"), ("recommend", "ensemble: top-10 items for users")):
        s = sub.add_parser(name, aliases=[name.replace("_", "-")] if "_" in name else [], parents=[common], help=what)
        s.add_argument("--ids", help="comma-separated user ids, e.g. 3,14,15")
        s.add_argument("--input", type=Path, help="CSV or .npy of user ids")
    s = sub.add_parser("search", parents=[common], help="ensemble: top-10 catalog items for texts (MovieLens titles)")
    s.add_argument("texts", nargs="+", help="query texts, e.g. 'space adventure with robots'")
    s = sub.add_parser("tokenizer", parents=[common], help="WordPiece ids and mask of texts (the tokenizer model)")
    s.add_argument("texts", nargs="+", help="texts")
    sub.add_parser("health", parents=[common], help="readiness of every --url")
    sub.add_parser("demo", parents=[common], help="start Triton on --repo, call everything over gRPC and HTTP, stop")
    args = p.parse_args(argv)
    if args.timeout <= 0:
        p.error("--timeout must be > 0")
    if args.rows < 1:
        p.error("--rows must be >= 1")
    if args.retries < 0:
        p.error("--retries must be >= 0")
    if args.n_users is not None and args.n_users < 1:
        p.error("--n-users must be >= 1")
    return args


def main(argv: list[str] | None = None, run_demo: Callable[[argparse.Namespace], int] | None = None) -> int:
    """The command line. `run_demo` (clients.demo.run_demo, passed by `python -m clients`) runs the demo: it
    starts a server, which the client library never does itself."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "health":
            return run_health(args)
        if args.command == "demo":
            if run_demo is None:
                raise CliError("the demo starts a server: run it as `python -m clients demo`")
            return run_demo(args)
        return run_model(args)
    except (CliError, ClientError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
