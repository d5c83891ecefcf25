"""perf_analyzer `--input-data` JSON files made from the project's own data, never random noise.

    kind            what each request carries                                  source
    windows         one 168-hour price window (nhits, reservoir, forecast)     test-split windows
    queries         one 384-d session query (similarity)                       test-split queries (noisy user vectors)
    user_ids        one user id (user_embedding, recommend)                    test-split user ids
    blend           the nhits + reservoir forecasts of one window              FP32 ONNX outputs on test windows
    tick_streams    one hourly tick; one stream = one asset's sequence         test-split series, one per stream
    texts           one UTF-8 text (search, tokenizer)                         held-out texts, each once (below)

Values are written as the shortest decimal that reads back to the same float32.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from models import data, spec

log = logging.getLogger(__name__)

# The tensors each kind fills: a scenario's model must take exactly these inputs.
TENSORS = {
    "windows": ("window",),
    "queries": ("query",),
    "user_ids": ("user_id",),
    "blend": ("nhits_forecast", "reservoir_forecast"),
    "tick_streams": ("tick",),
    "texts": ("text",),
}
KINDS = tuple(TENSORS)


def _spread(total: int, n: int) -> np.ndarray:
    """n row indices spread evenly over `total` rows (every asset represented), deterministic."""
    return (np.arange(n) * total) // n if n <= total else np.arange(n) % total


def _content(v: np.ndarray) -> list:
    if np.issubdtype(v.dtype, np.integer):
        return [int(i) for i in v.ravel()]
    return [float(np.format_float_positional(f, unique=True, trim="-")) for f in np.asarray(v, np.float32).ravel()]


def arrays_for(kind: str, artifacts: Path, repo: Path, n: int) -> dict[str, np.ndarray]:
    """(n, ...) arrays per input tensor for a batch kind (not tick_streams, not texts)."""
    if kind == "windows":
        x, _ = data.load_windows(artifacts, "test")
        return {"window": x[_spread(len(x), n)]}
    if kind == "queries":
        return {"query": data.load_queries(artifacts, "test", n).astype(np.float32)}
    if kind == "user_ids":
        return {"user_id": data.load_user_ids(artifacts, "test", n).reshape(n, 1).astype(np.int64)}
    if kind == "blend":
        import onnxruntime as ort

        x = arrays_for("windows", artifacts, repo, n)["window"]
        out = {}
        for name in ("nhits", "reservoir"):
            path = spec.served_version_dir(name, repo) / spec.ONNX_FP32
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            out[f"{name}_forecast"] = sess.run(["forecast"], {"window": x})[0].astype(np.float32)
        return out
    raise ValueError(f"unknown input kind {kind!r}: expected one of {', '.join(KINDS)}")


def texts_for(artifacts: Path, n: int) -> list[str]:
    """Up to n different held-out texts, in a fixed shuffled order: the free-text queries of models.real_data and
    the validation- and test-split movie texts (calibration draws from the train split only), each once, so that
    no request repeats another (a response cache would answer a repeat); fewer than n when there are fewer."""
    from models import real_data

    pool = list(
        dict.fromkeys(
            [*real_data.QUERIES, *data.load_texts(artifacts, "validation"), *data.load_texts(artifacts, "test")]
        )
    )
    order = np.random.default_rng(7).permutation(len(pool))
    return [pool[i] for i in order[:n]]


def write(kind: str, artifacts: Path, repo: Path, out: Path, n: int = 512, length: int = spec.INPUT_SIZE) -> Path:
    """Write one --input-data file; `n` entries (or `n` streams of `length` ticks for tick_streams)."""
    log.info("input data %s: %s x %d -> %s", kind, "streams" if kind == "tick_streams" else "entries", n, out)
    if kind == "tick_streams":  # the start of the test split of n different assets
        series = data.load_series(artifacts, "test")
        if length > series.shape[1]:
            raise ValueError(f"tick_streams length {length} is longer than the test split ({series.shape[1]} ticks)")
        ticks = series[_spread(len(series), n), :length].astype(np.float32)
        return _dump([[{"tick": {"content": _content(v), "shape": [1]}} for v in s] for s in ticks], out)
    if kind == "texts":
        return _dump([{"text": {"content": [t], "shape": [1]}} for t in texts_for(artifacts, n)], out)
    return write_arrays(arrays_for(kind, artifacts, repo, n), out)


def write_arrays(arrays: dict[str, np.ndarray], out: Path) -> Path:
    """An --input-data file with one request per row of `arrays` ({tensor: (n, ...)})."""
    n = len(next(iter(arrays.values())))
    return _dump(
        [{k: {"content": _content(a[i]), "shape": list(a[i].shape)} for k, a in arrays.items()} for i in range(n)], out
    )


def _dump(entries: list, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": entries}, separators=(",", ":")))
    return out


def tensors_in(path: Path) -> set[str]:
    """Input tensor names a written --input-data file fills."""
    first = json.loads(path.read_text())["data"][0]
    return set(first[0] if isinstance(first, list) else first)
