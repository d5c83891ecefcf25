"""Import a trained ReservoirPy 0.4 echo state network and serve it like the project's reservoir.

    python -m byom.import_reservoirpy --model esn.npz --out-repo R --artifacts A [--name reservoir]
        [--window 168] [--series heldout.npy]

The model file holds the trained ESN's weights as arrays (`.npz`, read with `allow_pickle=False`: nothing in it
can run): `save_weights(esn, "esn.npz")` below writes it from a live ReservoirPy model, in ReservoirPy's own
terms (W, Win, bias of the reservoir; Wout and bias of the Ridge readout; a JSON string `hyper` with lr,
input_to_readout and what is recorded for the report). The file is rebuilt into a ReservoirPy ESN, whose
`esn.run` is the reference every check compares against. What ReservoirPy users save by default,
`reservoirpy.save(esn, "esn")` (`esn.rpy`), `pickle.dump` / `joblib.dump` (`.pkl`, `.pickle`, `.joblib`), is a
pickle: unpickling runs whatever code the file names, with this process's rights (the repository, the admin key
beside it), so such a file is refused unless `--trust-pickle` says you made it or trust who did.
Supported: an `ESN` or a `Reservoir >> Ridge` model (tanh
reservoir: units, lr, sr, input_scaling, bias, input_connectivity, rc_connectivity; Ridge readout with
its bias; `input_to_readout=True`), one input feature. Anything else is refused naming the option.

What is served, in two entries whose configs are copied from model_repository/reservoir and
model_repository/reservoir_stream (only names and dims change):

- `<name>`: `window` [T] (T = --window) -> `forecast` [D]: the ESN's readout at the LAST of the T steps,
  run from the zero state; the same numbers as `esn.reset(); esn.run(window[:, None])[-1]`.
- `<name>_stream`: one `tick` [1] per request -> `forecast` [D]: the readout after that tick; Triton keeps
  one state per sequence, zero at START, so tick t of a sequence answers `esn.reset(); esn.run(ticks)[t]`.

D is the ESN's output dimension (1 for a one-step-ahead predictor; train the readout on the next 24
values and it is the project's 24-step forecast, which is what `clients.stream` reads). The weights go
into the project's `models.reservoir.Reservoir` with `transform="identity"` (no log / exp, no residual).

Checks: ONNX (FP32) against `esn.run` on held-out data, windowed and tick by tick, max|onnx - esn| / max|esn|
per window or tick within the bound, else exit 1. The default bound comes from the model itself: the same
weights run in numpy float32 differ from `esn.run` (float64) by some e32, the rounding this ESN amplifies
(a readout with large weights, i.e. a small ridge, amplifies more); the bound is 4 x e32 within [1e-5, 1e-4]
(byom.importer.derive_bound). An ESN with e32 above 1e-4 cannot be served in float32 and is refused
before anything is exported, with its largest readout weight and ridge named; `--bound` overrides.
`--series` gives the data (.npy, or .csv / .txt first column): its first half feeds INT8 calibration, its
second half the checks; without it a seeded synthetic signal is used and a warning says so. INT8 reuses the
project's calibration (the recurrent GEMMs stay FP32, only the readout may be INT8) and falls back to an FP32
copy when INT8 moves the output by more than 1 %.

Atomic: both entries are built in a stage beside --out-repo (repository.publish) and moved in only after every
check passed; a refused option, a failed bound or a killed run leaves --out-repo byte-identical. Report:
`<artifacts>/byom/<name>/report.json` (written for failed imports too).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from byom import importer
from byom.importer import Entry, Unsupported
from common.cli import CliError, OneLineParser, run_main, setup_logging
from common.files import sha256_file, write_json
from export import graphs
from models import spec
from repository import publish

log = logging.getLogger("byom.import_reservoirpy")

PROG = "byom.import_reservoirpy"
EXTRA = "reservoirpy"
N_VERIFY_WINDOWS = 64
N_STREAMS = 4  # held-out ticks are cut into this many sequences
MAX_STREAM_TICKS = 200
N_CALIB = 256
SEED = 1234
WEIGHTS_SUFFIX = ".npz"  # save_weights: arrays and a JSON string, nothing that unpickles
PICKLE_SUFFIXES = (".rpy", ".pkl", ".pickle", ".joblib")  # ReservoirPy's save, pickle, joblib: --trust-pickle only
SUFFIXES = (WEIGHTS_SUFFIX, *PICKLE_SUFFIXES)
WEIGHTS_FORMAT = "reservoirpy-esn-weights/1"


@dataclass
class EsnWeights:
    """A ReservoirPy ESN as arrays: x' = (1 - lr) x + lr tanh(W x + W_in u + b);  y = W_x x + w_u u + b_out."""

    w: np.ndarray  # (N, N)
    w_in: np.ndarray  # (N,)
    bias: np.ndarray  # (N,)
    lr: float
    w_x: np.ndarray  # (D, N)
    w_u: np.ndarray  # (D,)
    b_out: np.ndarray  # (D,)
    hyper: dict[str, Any] = field(default_factory=dict)

    @property
    def units(self) -> int:
        return int(self.w.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.w_x.shape[0])


def load(path: Path, trust_pickle: bool = False) -> tuple[Any, dict[str, Any]]:
    """The ESN as a ReservoirPy model and the hyper-parameters its file records ({} for a pickle). A weights file
    is read with allow_pickle=False; a pickle (.rpy, .pkl, .pickle, .joblib) is refused unless `trust_pickle`.
    reservoirpy is imported first so a missing install is one clear line."""
    importer.require("reservoirpy", EXTRA)
    if path.suffix in PICKLE_SUFFIXES:
        if not trust_pickle:
            raise CliError(
                f"{path} is a pickle: loading it runs any code it holds, with this process's rights, so it is not "
                f'loaded; write the weights with `byom.import_reservoirpy.save_weights(esn, "esn.npz")` where the '
                "model was trained (export/README.md, Bring your own model) and import that, or pass --trust-pickle if "
                "you made this file or trust who did"
            )
        log.warning("unpickling %s (--trust-pickle): it can run code", path)
        if path.suffix == ".joblib":
            import joblib

            return joblib.load(path), {}
        import pickle

        with open(path, "rb") as f:
            return pickle.load(f), {}
    return read_weights(path)


def read_weights(path: Path) -> tuple[Any, dict[str, Any]]:
    """A ReservoirPy ESN rebuilt from a `save_weights` file (no pickle: object arrays are refused)."""
    from reservoirpy import ESN
    from reservoirpy.nodes import Reservoir, Ridge

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError) as exc:
        raise CliError(f"{path}: not a weights file of save_weights ({type(exc).__name__}: {exc})") from None
    missing = sorted({"W", "Win", "bias", "Wout", "readout_bias", "hyper"} - set(arrays))
    if missing:
        raise CliError(f"{path}: arrays {', '.join(missing)} are missing (save_weights writes them)")
    try:
        hyper = json.loads(str(arrays["hyper"]))
    except (ValueError, TypeError) as exc:
        raise CliError(f"{path}: `hyper` is not a JSON string ({exc})") from None
    if hyper.get("format") != WEIGHTS_FORMAT:
        raise CliError(f"{path}: format {hyper.get('format')!r}, expected {WEIGHTS_FORMAT!r} (save_weights)")
    w = np.asarray(arrays["W"], np.float64)
    units = w.shape[0]
    if w.shape != (units, units) or arrays["Win"].size != units or arrays["bias"].size != units:
        raise CliError(f"{path}: W {w.shape}, Win {arrays['Win'].shape}, bias {arrays['bias'].shape} do not agree")
    wout = np.asarray(arrays["Wout"], np.float64)
    to_readout = bool(hyper.get("input_to_readout", False))
    if wout.ndim != 2 or wout.shape[0] != units + int(to_readout):
        raise CliError(f"{path}: Wout {wout.shape} is not ({units + int(to_readout)}, D)")
    reservoir = Reservoir(
        units=units,
        lr=float(hyper["lr"]),
        sr=None,  # W as trained: already at its spectral radius
        input_scaling=1.0,  # Win as trained: already scaled
        W=w,
        Win=np.asarray(arrays["Win"], np.float64).reshape(units, 1),
        bias=np.asarray(arrays["bias"], np.float64).reshape(units),
        activation=hyper.get("activation", "tanh"),
        input_dim=1,
    )
    readout = Ridge(
        ridge=float(hyper.get("ridge", 0.0)), Wout=wout, bias=np.asarray(arrays["readout_bias"], np.float64).reshape(-1)
    )
    model = ESN(reservoir=reservoir, readout=readout, input_to_readout=to_readout)
    model.initialize(np.zeros((1, 1)))
    recorded = {k: hyper[k] for k in ("sr", "input_scaling", "input_connectivity", "rc_connectivity") if k in hyper}
    return model, recorded


def save_weights(model: Any, path: str | Path) -> Path:
    """Write a trained ReservoirPy ESN (or `Reservoir >> Ridge`) as a weights file the importer reads without
    unpickling: the reservoir's W, Win, bias, the readout's Wout (reservoir rows, then the input row when
    input_to_readout) and bias, and the hyper-parameters as JSON. Run it where the model was trained."""
    esn = analyse(model)
    path = Path(path)
    if path.suffix != WEIGHTS_SUFFIX:
        path = path.with_name(path.name + WEIGHTS_SUFFIX)
    hyper = {"format": WEIGHTS_FORMAT, **{k: v for k, v in esn.hyper.items() if k != "bias"}}
    wout = np.vstack([esn.w_x.T, esn.w_u[None, :]]) if hyper["input_to_readout"] else esn.w_x.T
    np.savez(path, W=esn.w, Win=esn.w_in, bias=esn.bias, Wout=wout, readout_bias=esn.b_out, hyper=json.dumps(hyper))
    return path


def _dense(a: Any) -> np.ndarray:
    return np.asarray(a.toarray() if hasattr(a, "toarray") else a, dtype=np.float64)


def analyse(model: Any) -> EsnWeights:
    """Check every option against what the project's reservoir can express and read the weights."""
    from reservoirpy import activationsfunc
    from reservoirpy.model import Model
    from reservoirpy.nodes import Input, Reservoir, Ridge

    if not isinstance(model, Model):
        raise Unsupported(
            f"the file holds a {type(model).__name__}, not a model: expected a trained reservoirpy.ESN "
            "or a `Reservoir >> Ridge` model"
        )
    for node in model.nodes:
        if type(node) not in (Reservoir, Ridge, Input):
            raise Unsupported(
                f"node {type(node).__name__} ({node.name}) is not supported: only Reservoir, Ridge and Input "
                "nodes map onto the project's reservoir"
            )
    reservoirs = [n for n in model.nodes if type(n) is Reservoir]
    readouts = [n for n in model.nodes if type(n) is Ridge]
    if len(reservoirs) != 1 or len(readouts) != 1:
        raise Unsupported(
            f"{len(reservoirs)} Reservoir and {len(readouts)} Ridge nodes: exactly one of each is supported "
            "(no deep or parallel reservoirs)"
        )
    res, readout = reservoirs[0], readouts[0]
    if getattr(model, "feedback", False) or any(delay != 0 for _, delay, _ in model.edges):
        raise Unsupported("feedback=True (readout fed back into the reservoir) is not supported")
    if list(model.outputs) != [readout]:
        raise Unsupported(
            f"model outputs {[n.name for n in model.outputs]}: only the readout may be an output "
            "(return_reservoir_activity=True is not supported)"
        )
    if len(model.inputs) != 1:
        raise Unsupported(f"{len(model.inputs)} input nodes: one input series is supported")
    if any(type(p) is not Input for p in model.parents[res]):
        raise Unsupported("the reservoir is fed by something other than the model input")
    if not getattr(res, "initialized", False) or not getattr(readout, "initialized", False):
        raise Unsupported("the model is not trained (nodes not initialized): fit it before saving")
    if readout.Wout is None or not hasattr(readout.Wout, "shape"):
        raise Unsupported("the Ridge readout has no Wout: fit the model before saving")
    if res.input_dim != 1:
        raise Unsupported(f"input_dim={res.input_dim}: the project's reservoir takes one input feature")
    act = res.activation
    if act is not activationsfunc.tanh and act is not np.tanh:
        raise Unsupported(f"activation={getattr(act, '__name__', act)!r}: only tanh is supported")
    lr = np.asarray(res.lr, dtype=np.float64).reshape(-1)
    if lr.size > 1 and not np.all(lr == lr[0]):
        raise Unsupported("lr given per unit (an array of leak rates): the project's reservoir has one leak rate")

    n = int(res.units)
    w = _dense(res.W)
    w_in = _dense(res.Win).reshape(n, -1)[:, 0]
    bias = np.broadcast_to(_dense(res.bias).reshape(-1), (n,)).copy()
    w_out = _dense(readout.Wout)  # (readout inputs, D)
    b_out = _dense(readout.bias).reshape(-1) if readout.bias is not None else np.zeros(w_out.shape[1])
    d = int(w_out.shape[1])
    w_x, w_u = None, np.zeros(d)
    row = 0
    for parent in model.parents[readout]:  # the readout sees its parents' outputs concatenated in this order
        width = int(parent.output_dim)
        block = w_out[row : row + width]
        if parent is res:
            w_x = block.T
        elif type(parent) is Input:
            w_u = block[0]  # input_to_readout=True
        else:
            raise Unsupported(f"the readout reads {type(parent).__name__} ({parent.name}): not supported")
        row += width
    if w_x is None or row != w_out.shape[0]:
        raise Unsupported(f"the readout's Wout has {w_out.shape[0]} rows, not the reservoir's {n} (+ input)")
    sr = res.sr if res.sr is not None else float(np.max(np.abs(np.linalg.eigvals(w))))
    hyper = {
        "units": n,
        "lr": float(lr[0]),
        "sr": float(sr),
        "input_scaling": np.asarray(res.input_scaling, dtype=np.float64).reshape(-1).tolist(),
        "input_connectivity": float(res.input_connectivity),
        "rc_connectivity": float(res.rc_connectivity),
        "bias": "array" if np.ndim(res.bias) else float(res.bias),
        "activation": "tanh",
        "ridge": float(getattr(readout, "ridge", float("nan"))),
        "input_to_readout": bool(np.any(w_u != 0.0)) or len(model.parents[readout]) > 1,
        "output_dim": d,
    }
    return EsnWeights(w, w_in, bias, float(lr[0]), w_x, w_u, b_out, hyper)


# ----------------------------------------------------------------------------- our module


GRAPHS = ("fused", "stepwise")  # tried in this order: the fused graph where it holds the bound, else node by node


def build(esn: EsnWeights, window: int, graph: str = "fused"):
    """The project's Reservoir holding the ESN's weights (float32, eval mode); ReservoirStream wraps it per tick.
    Its own dense W and leaky update as they are; `graph`: "fused" (the input projection outside the
    recurrence, fewer nodes) or "stepwise" (the equations node by node, the exact path)."""
    from models.reservoir import Reservoir, ReservoirConfig

    cfg = ReservoirConfig(
        units=esn.units,
        window=window,
        horizon=esn.out_dim,
        spectral_radius=esn.hyper["sr"],
        leak=esn.lr,
        input_scaling=esn.hyper["input_scaling"][0],
        density=esn.hyper["rc_connectivity"],
        transform="identity",
        topology="random",
        fold_leak=False,
        graph=graph,
    )
    f32 = np.float32
    module = Reservoir(cfg, weights=(esn.w.astype(f32), esn.w_in.astype(f32), esn.bias.astype(f32)))
    module.set_readout(np.column_stack([esn.b_out, esn.w_u, esn.w_x]))  # (D, N + 2) over [1; u; x]
    return module.float().eval()


def entries(name: str, window: int, esn: EsnWeights) -> tuple[Entry, Entry]:
    forecast = spec.Tensor(spec.FORECAST.name, "float32", (esn.out_dim,))
    state = (esn.units,)
    windowed = Entry(
        name, "reservoir", "reservoir", (spec.Tensor(spec.WINDOW.name, "float32", (window,)),), (forecast,)
    )
    stream = Entry(
        f"{name}_stream",
        spec.STREAM.name,
        spec.STREAM.name,
        (spec.STREAM.inputs[0], spec.Tensor(graphs.STREAM_STATE_IN, "float32", state)),
        (forecast, spec.Tensor(graphs.STREAM_STATE_OUT, "float32", state)),
    )
    return windowed, stream


# ----------------------------------------------------------------------------- data


def read_series(path: Path) -> np.ndarray:
    """A 1-D series from .npy (1-D or (T, 1)) or .csv / .txt (first column, an optional header line)."""
    if path.suffix == ".npy":
        a = np.load(path)
        if a.ndim == 2 and a.shape[1] == 1:
            a = a[:, 0]
        if a.ndim != 1:
            raise CliError(f"{path}: expected a 1-D series or shape (T, 1), got {a.shape}")
        return a.astype(np.float64)
    values = []
    for i, line in enumerate(path.read_text().splitlines()):
        cell = line.split(",")[0].strip()
        if not cell:
            continue
        try:
            values.append(float(cell))
        except ValueError:
            if i or values:
                raise CliError(f"{path}: line {i + 1}: {cell!r} is not a number") from None
    return np.asarray(values, dtype=np.float64)


def synthetic_series(n: int, seed: int = SEED) -> np.ndarray:
    """A seeded smooth signal in about [-1, 1] when no held-out data is given."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    periods, phases = rng.uniform(8, 120, 4), rng.uniform(0, 2 * np.pi, 4)
    s = sum(np.sin(2 * np.pi * t / p + f) for p, f in zip(periods, phases, strict=True)) / 2.0
    return s + 0.05 * rng.standard_normal(n)


@dataclass
class Data:
    calib_windows: np.ndarray  # (C, T) from the first half
    verify_windows: np.ndarray  # (V, T) from the second half
    streams: np.ndarray  # (S, L) from the second half
    source: str


def split(series: np.ndarray, window: int, source: str, n_calib: int = N_CALIB) -> Data:
    half = len(series) // 2
    first, second = series[:half].astype(np.float32), series[half:].astype(np.float32)
    if len(first) < window + 1 or len(second) < window + N_STREAMS:
        raise CliError(
            f"the series has {len(series)} values: need at least {2 * (window + N_STREAMS)} "
            f"(each half one window of {window} and more)"
        )
    rng = np.random.default_rng(SEED)
    starts = rng.choice(len(first) - window + 1, size=min(n_calib, len(first) - window + 1), replace=False)
    calib = np.stack([first[s : s + window] for s in np.sort(starts)])
    v_starts = np.linspace(0, len(second) - window, min(N_VERIFY_WINDOWS, len(second) - window + 1)).round()
    verify = np.stack([second[int(s) : int(s) + window] for s in v_starts])
    length = min(MAX_STREAM_TICKS, len(second) // N_STREAMS)
    streams = np.stack([second[i * length : (i + 1) * length] for i in range(N_STREAMS)])
    return Data(calib, verify, streams, source)


# ----------------------------------------------------------------------------- references


def esn_windows(model: Any, windows: np.ndarray) -> np.ndarray:
    """ReservoirPy's answer per window from the zero state: esn.run(window)[-1] -> (V, D)."""
    model.reset()
    out = model.run(windows.astype(np.float64)[..., None])  # every series starts from the reset state
    model.reset()
    return np.asarray(out)[:, -1, :]


def esn_streams(model: Any, streams: np.ndarray) -> np.ndarray:
    """ReservoirPy's readout after every tick of each sequence, from the zero state -> (S, L, D)."""
    model.reset()
    out = model.run(streams.astype(np.float64)[..., None])
    model.reset()
    return np.asarray(out)


def float32_run(esn: EsnWeights, series: np.ndarray) -> np.ndarray:
    """The ESN's equations in numpy float32 with the same weights, from the zero state: (B, T) -> (B, T, D).
    Independent of the exported module: it measures what float32 itself does to this ESN."""
    f = np.float32
    w_t, w_in, bias, lr = esn.w.T.astype(f), esn.w_in.astype(f), esn.bias.astype(f), f(esn.lr)
    w_x_t, w_u, b_out = esn.w_x.T.astype(f), esn.w_u.astype(f), esn.b_out.astype(f)
    u = series.astype(f)
    x = np.zeros((len(u), esn.units), f)
    out = np.empty((*u.shape, esn.out_dim), f)
    for t in range(u.shape[1]):
        ut = u[:, t : t + 1]
        x = (f(1) - lr) * x + lr * np.tanh(x @ w_t + ut * w_in + bias)
        out[:, t] = x @ w_x_t + ut * w_u + b_out
    return out


@dataclass
class References:
    windows: np.ndarray  # esn.run per verification window, (V, D)
    streams: np.ndarray  # esn.run per tick of each sequence, (S, L, D)
    float32_err: float  # the same weights in float32 against those, max per answer


def references(model: Any, esn: EsnWeights, data: Data) -> References:
    windows, streams = esn_windows(model, data.verify_windows), esn_streams(model, data.streams)
    d = esn.out_dim
    err = max(
        float(importer.relative_errors(float32_run(esn, data.verify_windows)[:, -1], windows, d).max()),
        float(importer.relative_errors(float32_run(esn, data.streams), streams, d).max()),
    )
    return References(windows, streams, err)


# ----------------------------------------------------------------------------- stages


def import_windowed(
    entry: Entry, module: Any, esn: EsnWeights, data: Data, ref: References, paths: dict[str, Path], meta: dict
) -> dict[str, Any]:
    import torch

    fp32 = entry.version_dir(paths["repo"]) / spec.ONNX_FP32
    rec = importer.export_onnx(entry, module, (torch.from_numpy(data.calib_windows[:2]),), fp32, meta)
    ours = importer.run_onnx(fp32, {"window": data.verify_windows})[0]
    errs = importer.relative_errors(ours, ref.windows, esn.out_dim)
    rec["verification"] = {
        "reference": "esn.reset(); esn.run(window)[-1], float64",
        "windows": len(errs),
        "max_rel_err": float(errs.max()),
        "median_rel_err": float(np.median(errs)),
    }
    rec["int8"] = importer.make_int8(
        entry,
        fp32,
        {"window": data.calib_windows},
        paths["calibration"] / f"{entry.name}.npz",
        lambda p: float(
            importer.relative_errors(importer.run_onnx(p, {"window": data.verify_windows})[0], ours, esn.out_dim).max()
        ),
    )
    return rec


def import_stream(
    entry: Entry, module: Any, esn: EsnWeights, data: Data, ref: References, paths: dict[str, Path], meta: dict
) -> dict[str, Any]:
    import torch

    from models.reservoir import ReservoirStream

    calib = torch.from_numpy(data.calib_windows)
    with torch.no_grad():  # calibration states: the state after all ticks of a window but the last
        if calib.shape[1] > 1:
            states = module.stream_state(module.encode(calib[:, :-1]))
        else:
            states = torch.zeros(len(calib), esn.units)
    ticks = calib[:, -1:].contiguous()
    fp32 = entry.version_dir(paths["repo"]) / spec.ONNX_FP32
    rec = importer.export_onnx(entry, ReservoirStream(module).eval(), (ticks[:2], states[:2]), fp32, meta)
    ours = importer.run_stream(fp32, data.streams, esn.units)
    errs = importer.relative_errors(ours, ref.streams, esn.out_dim)
    rec["verification"] = {
        "reference": "esn.reset(); esn.run(sequence), every tick, float64",
        "sequences": int(data.streams.shape[0]),
        "ticks_per_sequence": int(data.streams.shape[1]),
        "max_rel_err": float(errs.max()),
        "median_rel_err": float(np.median(errs)),
    }
    rec["int8"] = importer.make_int8(
        entry,
        fp32,
        {"tick": ticks.numpy(), "state_in": states.numpy()},
        paths["calibration"] / f"{entry.name}.npz",
        lambda p: float(
            importer.relative_errors(importer.run_stream(p, data.streams, esn.units), ours, esn.out_dim).max()
        ),
    )
    return rec


# ----------------------------------------------------------------------------- CLI


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="the ESN's weights (.npz of save_weights)")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="also load a pickle (.rpy of reservoirpy.save, .pkl, .pickle, .joblib): it runs any code it holds; "
        "only for a file you made or whose maker you trust",
    )
    p.add_argument("--out-repo", type=Path, required=True, help="model repository for <name>/ and <name>_stream/")
    p.add_argument("--artifacts", type=Path, required=True, help="checkpoint, calibration sets and report go here")
    p.add_argument("--name", default="reservoir", help="served model name (default %(default)s; + _stream)")
    p.add_argument("--window", type=int, default=spec.INPUT_SIZE, help="ticks per windowed request (%(default)s)")
    p.add_argument("--series", type=Path, help="held-out series (.npy / .csv): calibration and verification data")
    p.add_argument("--calib-count", type=int, default=N_CALIB, help="INT8 calibration windows (%(default)s)")
    p.add_argument(
        "--bound",
        type=float,
        help="ONNX vs esn.run relative bound (default: derived from the model, see the docstring)",
    )
    p.add_argument("--template-repo", type=Path, default=importer.TEMPLATE_REPOSITORY, help="configs to copy")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.model.is_file():
        raise CliError(f"model file {args.model} does not exist")
    if args.model.suffix not in SUFFIXES:
        raise CliError(f"model file {args.model}: expected {', '.join(SUFFIXES)} (save_weights writes .npz)")
    if args.series is not None and not args.series.is_file():
        raise CliError(f"series file {args.series} does not exist")
    if args.window < 1 or args.calib_count < 1:
        raise CliError("--window and --calib-count must be at least 1")
    if args.bound is not None and not args.bound > 0:
        raise CliError("--bound must be positive")
    importer.check_name(args.name)
    setup_logging(args.verbose)
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "onnxruntime.quantization.shape_inference"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    t0 = time.perf_counter()
    model, recorded = load(args.model, args.trust_pickle)
    esn = analyse(model)
    esn.hyper.update(recorded)  # as trained (the rebuilt reservoir holds W and Win already scaled)
    if args.series is not None:
        data = split(read_series(args.series), args.window, str(args.series), args.calib_count)
    else:
        log.warning("no --series: calibrating and verifying on a seeded synthetic signal, not your data")
        data = split(synthetic_series(4 * (args.window + MAX_STREAM_TICKS)), args.window, "synthetic", args.calib_count)
    ref = references(model, esn, data)
    max_weight = float(np.abs(np.column_stack([esn.w_x, esn.w_u])).max())
    bound = importer.derive_bound(
        ref.float32_err,
        args.bound,
        "esn.run (float64) and the same weights run in float32",
        f"the readout's largest weight, {max_weight:.3g}, multiplies the float32 rounding of the state: "
        f"retrain with a larger ridge (this one has {esn.hyper['ridge']:g})",
    )

    import torch

    torch.set_num_threads(1)  # shared 2-core machines (see export.onnx_export)
    windowed, stream = entries(args.name, args.window, esn)
    out_dir = args.artifacts / "byom" / args.name
    meta = importer.file_meta(PROG, args.model, args.name)
    report: dict[str, Any] = {
        "importer": PROG,
        "source": str(args.model),
        "esn": esn.hyper,
        "readout_max_abs_weight": max_weight,
        "data": {"source": data.source, "calibration_windows": len(data.calib_windows)},
        "served": {
            windowed.name: f"window [{args.window}] -> forecast [{esn.out_dim}]: esn.run(window)[-1] from the zero state",
            stream.name: f"tick [1] -> forecast [{esn.out_dim}] after every tick; state [{esn.units}] per sequence",
        },
        "bound": {"onnx_vs_reservoirpy_rel_err": bound.as_dict(), "int8_vs_fp32_rel_err": importer.INT8_BOUND},
    }
    with publish.Staging(args.out_repo) as stage:  # nothing reaches --out-repo unless every check passed
        paths = {"repo": stage.repo, "calibration": out_dir / "calibration"}
        for entry in (windowed, stream):
            importer.write_configs(entry, stage.repo, args.template_repo, PROG)
        for graph in GRAPHS:  # the fused graph where it holds the bound, else the equations node by node
            module = build(esn, args.window, graph)
            report["models"] = {
                windowed.name: import_windowed(windowed, module, esn, data, ref, paths, meta),
                stream.name: import_stream(stream, module, esn, data, ref, paths, meta),
            }
            bad = [
                f"{name}: ONNX vs esn.run relative error {rec['verification']['max_rel_err']:.3g} > {bound.value:g}"
                for name, rec in report["models"].items()
                if not rec["verification"]["max_rel_err"] <= bound.value
            ]
            report["graph"] = graph
            if not bad:
                break
            log.warning("%s graph misses the bound (%s); exporting the stepwise graph", graph, bad[0])
        report["seconds"] = round(time.perf_counter() - t0, 3)
        detail = f"the same weights in float32: {ref.float32_err:.3g}; bound {bound.source}"
        importer.settle(report, bad, out_dir, args.out_repo, detail)
        for entry in (windowed, stream):
            onnx_path = entry.version_dir(stage.repo) / spec.ONNX_FP32
            record = {"model": entry.name, "onnx_sha256": sha256_file(onnx_path), **report["models"][entry.name]}
            write_json(onnx_path.with_name(onnx_path.name + ".json"), record)
        torch.save({"config": module.config_dict(), "state_dict": module.state_dict()}, out_dir / "checkpoint.pt")
        importer.commit(stage, [windowed.name, stream.name])
    errs = [report["models"][e.name]["verification"]["max_rel_err"] for e in (windowed, stream)]
    int8 = [e.name for e in (windowed, stream) if report["models"][e.name]["int8"]["quantized"]]
    print(
        f"imported {args.model} as {windowed.name} (window {args.window} -> {esn.out_dim}) and {stream.name} into "
        f"{args.out_repo}; ONNX vs esn.run: {errs[0]:.2g} windowed, {errs[1]:.2g} per tick (bound {bound.value:.2g}, "
        f"float32 of the same weights {ref.float32_err:.2g}; {report['graph']} graph); "
        f"INT8 Q/DQ: {', '.join(int8) or 'none, FP32 copies'}; "
        f"report {out_dir / 'report.json'}"
    )
    return 0


if __name__ == "__main__":
    run_main(PROG, main)
