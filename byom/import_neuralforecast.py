"""Import a trained neuralforecast NHITS and serve it like the project's nhits.

    python -m byom.import_neuralforecast --model saved_nf_dir --out-repo R --artifacts A [--name nhits]
        [--alias NHITS] [--df series.csv]

The model is a directory written by `NeuralForecast.save(path)` (neuralforecast 3.x: safetensors + JSON;
loaded with `NeuralForecast.load(path, allow_pickle=False)`: its sidecars go through neuralforecast's restricted
unpickler and a legacy pickle is refused, so no code from the directory runs). One NHITS model of it is
imported (`--alias` picks one when there are several); its weights go into the project's
`models.nhits.NHITS` (`NHITSConfig` from input_size, h, n_blocks, n_pool_kernel_size, n_freq_downsample,
mlp_units, pooling_mode, interpolation_mode), and neuralforecast's window scaler (`scaler_type`:
identity, standard, robust, minmax, minmax1, invariant) is reproduced in the ONNX graph, so raw values go
in and raw values come out, as in the project's nhits.

Served: `<name>` with `window` [input_size] -> `forecast` [h], configs copied from model_repository/nhits
(only name and dims change). A request's window is the last input_size values of a series; the answer
is what `nf.predict()` gives for that series.

Refused, with an error naming the option: exogenous variables (futr/hist/stat_exog_list,
exclude_insample_y), NeuralForecast-level `local_scaler_type` / `local_static_scaler_type` (statistics
fitted per series on the training frame, not derivable from a window), distribution or multi-output
losses (loss outputs != 1), `scaler_type` revin, `interpolation_mode` cubic, `activation` other than
ReLU, `mlp_units` with differing widths, stack types other than identity.

Checks: ONNX (FP32) against `nf.predict()` for every series, max|onnx - nf| / max|nf| per series within the
bound, else exit 1. The default bound comes from the model itself: the same weights in float32 and in float64
(the project's module, `.double()`) differ by some e32 on these windows; both ONNX and neuralforecast compute in
float32, so they differ by about that much; the bound is 4 x e32 within [1e-5, 1e-4]
(byom.importer.derive_bound). A model with e32 above 1e-4 cannot be served in float32 and is refused
before anything is exported; `--bound` overrides. The series come from the dataset saved with the model
(`save_dataset=True`, the default) or from `--df` (long format: unique_id, ds, y). INT8 reuses the
project's calibration (nhits policy) on windows that end before each series' last window and falls back
to an FP32 copy when INT8 moves a forecast by more than 1 %.

Atomic: the entry is built in a stage beside --out-repo (repository.publish) and moved in only after every check
passed; a refused option, a failed bound or a killed run leaves --out-repo byte-identical. Report:
`<artifacts>/byom/<name>/report.json` (written for failed imports too).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from byom import importer
from byom.importer import Entry, Unsupported
from common.cli import CliError, OneLineParser, run_main, setup_logging
from common.files import sha256_file, write_json
from models import spec
from repository import publish

log = logging.getLogger("byom.import_neuralforecast")

PROG = "byom.import_neuralforecast"
EXTRA = "neuralforecast"
SCALERS = ("identity", "standard", "robust", "minmax", "minmax1", "invariant")
N_CALIB = 512
SEED = 1234
MAD_FROM_STD = 0.6744897501960817  # neuralforecast's robust scaler falls back to this * std when the MAD is 0


# ----------------------------------------------------------------------------- loading and checks


def load(path: Path) -> Any:
    importer.require("neuralforecast", EXTRA)
    from neuralforecast import NeuralForecast

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # explicit, whatever a later release defaults to: no unrestricted unpickling of the directory's files
            return NeuralForecast.load(str(path), allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - neuralforecast raises bare Exceptions; say which directory
            raise CliError(f"{path}: not readable by NeuralForecast.load ({type(e).__name__}: {e})") from None


def alias_of(model: Any) -> str:
    return str(model)  # neuralforecast: the alias, else the class name; it names the predict() column


def pick(nf: Any, alias: str | None) -> Any:
    from neuralforecast.models import NHITS

    found = [m for m in nf.models if isinstance(m, NHITS)]
    if alias is not None:
        found = [m for m in found if alias_of(m) == alias]
    if len(found) != 1:
        have = ", ".join(f"{alias_of(m)} ({type(m).__name__})" for m in nf.models)
        what = f"no NHITS model with alias {alias!r}" if alias is not None and not found else None
        what = what or ("no NHITS model" if not found else "several NHITS models: pass --alias")
        raise CliError(f"{what}; the saved models are: {have}")
    return found[0]


def check(nf: Any, model: Any) -> dict[str, Any]:
    """Every option against what the project's nhits (plus the scaler in the graph) can express."""
    hp = dict(model.hparams)
    for opt in ("local_scaler_type", "local_static_scaler_type"):
        if getattr(nf, opt, None) is not None:
            raise Unsupported(
                f"{opt}={getattr(nf, opt)!r} (NeuralForecast scales each series with statistics fitted on the "
                "training frame, which a served window does not carry): retrain with scaler_type on the model"
            )
    for opt in ("futr_exog_list", "hist_exog_list", "stat_exog_list"):
        if hp.get(opt):
            raise Unsupported(f"{opt}={list(hp[opt])} (exogenous variables): the served model takes one window")
    if hp.get("exclude_insample_y"):
        raise Unsupported("exclude_insample_y=True: the served model forecasts from the series itself")
    loss = model.loss
    if getattr(loss, "is_distribution_output", False) or getattr(loss, "outputsize_multiplier", 1) != 1:
        raise Unsupported(
            f"loss={type(loss).__name__} ({getattr(loss, 'outputsize_multiplier', '?')} outputs per step): "
            "only point losses with one output per step (MAE, MSE, RMSE, MAPE, SMAPE, MASE, HuberLoss) are served"
        )
    stacks = list(hp.get("stack_types", ["identity"] * len(hp["n_blocks"])))
    if any(s != "identity" for s in stacks):
        raise Unsupported(f"stack_types={stacks}: only identity stacks exist in NHITS")
    if hp.get("activation", "ReLU") != "ReLU":
        raise Unsupported(f"activation={hp['activation']!r}: the project's nhits uses ReLU")
    mlp = [list(layer) for layer in hp["mlp_units"]]
    if not mlp or any(a != mlp[0][0] or b != mlp[0][0] for a, b in mlp):
        raise Unsupported(f"mlp_units={mlp}: the project's nhits has one hidden width in every layer")
    from models.nhits import INTERPOLATION, POOLING

    if hp.get("pooling_mode", "MaxPool1d") not in POOLING:
        raise Unsupported(f"pooling_mode={hp['pooling_mode']!r}: supported {sorted(POOLING)}")
    if hp.get("interpolation_mode", "linear") not in INTERPOLATION:
        raise Unsupported(f"interpolation_mode={hp['interpolation_mode']!r}: supported {list(INTERPOLATION)}")
    scaler = hp.get("scaler_type") or "identity"
    if scaler not in SCALERS:
        raise Unsupported(f"scaler_type={scaler!r}: supported {list(SCALERS)}")
    n_stacks = len(hp["n_blocks"])
    if len(hp["n_pool_kernel_size"]) != n_stacks or len(hp["n_freq_downsample"]) != n_stacks:
        raise Unsupported("n_blocks, n_pool_kernel_size and n_freq_downsample differ in length")
    return {
        "alias": alias_of(model),
        "h": int(hp["h"]),
        "input_size": int(hp["input_size"]),
        "n_blocks": [int(b) for b in hp["n_blocks"]],
        "n_pool_kernel_size": [int(k) for k in hp["n_pool_kernel_size"]],
        "n_freq_downsample": [int(d) for d in hp["n_freq_downsample"]],
        "mlp_units": mlp,
        "pooling_mode": hp.get("pooling_mode", "MaxPool1d"),
        "interpolation_mode": hp.get("interpolation_mode", "linear"),
        "dropout_prob_theta": float(hp.get("dropout_prob_theta", 0.0)),  # identity at inference
        "scaler_type": scaler,
        "scaler_eps": float(getattr(model.scaler, "eps", 1e-6)),
        "loss": type(loss).__name__,
        "freq": str(nf.freq),
    }


# ----------------------------------------------------------------------------- our module


def build(model: Any, hp: dict[str, Any]) -> WindowScaled:
    """The project's NHITS with the trained weights, inside neuralforecast's window scaler (float32, eval)."""
    from models.nhits import NHITS, NHITSConfig

    pools, downs = [], []
    for blocks, pool, down in zip(hp["n_blocks"], hp["n_pool_kernel_size"], hp["n_freq_downsample"], strict=True):
        pools += [pool] * blocks
        downs += [down] * blocks
    cfg = NHITSConfig(
        input_size=hp["input_size"],
        h=hp["h"],
        n_pool_kernel_size=tuple(pools),
        n_freq_downsample=tuple(downs),
        hidden=hp["mlp_units"][0][0],
        n_layers=len(hp["mlp_units"]),
        pooling_mode=hp["pooling_mode"],
        interpolation_mode=hp["interpolation_mode"],
    )
    core = NHITS(cfg)
    if len(core.blocks) != len(model.blocks):
        raise CliError(f"{len(model.blocks)} trained blocks, {len(core.blocks)} built: n_blocks does not match")
    with torch.no_grad():
        for i, (ours, theirs) in enumerate(zip(core.blocks, model.blocks, strict=True)):
            a = [m for m in ours.layers if isinstance(m, torch.nn.Linear)]
            b = [m for m in theirs.layers if isinstance(m, torch.nn.Linear)]
            shapes = ([tuple(m.weight.shape) for m in a], [tuple(m.weight.shape) for m in b])
            if shapes[0] != shapes[1]:
                raise CliError(f"block {i}: layer shapes {shapes[1]} cannot map onto {shapes[0]}")
            for dst, src in zip(a, b, strict=True):
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
    return WindowScaled(core, hp["scaler_type"], hp["scaler_eps"]).float().eval()


class WindowScaled(nn.Module):
    """forward(window (B, L) raw) -> forecast (B, h) raw: neuralforecast's TemporalNorm on the window (all of it
    valid), the project's N-HiTS on the scaled window, then the inverse scaling of its output."""

    def __init__(self, core: nn.Module, scaler_type: str, eps: float):
        super().__init__()
        self.core, self.scaler_type, self.eps = core, scaler_type, eps
        self.mid = (core.cfg.input_size - 1) // 2  # torch's (nan)median is the lower middle value

    def _median(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sort(x, dim=1).values[:, self.mid : self.mid + 1]

    def _nonzero(self, s: torch.Tensor) -> torch.Tensor:
        return torch.where(s == 0, torch.ones_like(s), s) + self.eps

    def stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shift, scale), each (B, 1), as neuralforecast's *_statistics compute them."""
        kind = self.scaler_type
        if kind == "identity":
            return torch.zeros_like(x[:, :1]), torch.ones_like(x[:, :1])
        if kind in ("minmax", "minmax1"):
            lo = x.min(dim=1, keepdim=True).values
            return lo, self._nonzero(x.max(dim=1, keepdim=True).values - lo)
        mean = x.mean(dim=1, keepdim=True)
        std = torch.sqrt(((x - mean) ** 2).mean(dim=1, keepdim=True))
        if kind == "standard":
            return mean, self._nonzero(std)
        median = self._median(x)  # robust, invariant
        mad = self._median(torch.abs(x - median))
        mad = mad * (mad > 0) + std * MAD_FROM_STD * (mad == 0)
        return median, self._nonzero(mad)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        shift, scale = self.stats(window)
        z = (window - shift) / scale
        if self.scaler_type == "minmax1":
            z = z * 2 - 1
        elif self.scaler_type == "invariant":
            z = torch.asinh(z)
        y = self.core.forward_scaled(z)  # (B, h)
        if self.scaler_type == "minmax1":
            y = (y + 1) / 2
        elif self.scaler_type == "invariant":
            y = torch.sinh(y)
        return y * scale + shift


# ----------------------------------------------------------------------------- data and reference


@dataclass
class Series:
    uids: list[str]
    values: list[np.ndarray]  # float32, one per series, in time order
    source: str


def stored_series(nf: Any) -> Series | None:
    """The series saved with the model (NeuralForecast.save(save_dataset=True))."""
    ds = getattr(nf, "dataset", None)
    if ds is None:
        return None
    y = ds.temporal[:, list(ds.temporal_cols).index(nf.target_col)].numpy().astype(np.float32)
    indptr = np.asarray(ds.indptr)
    uids = [str(u) for u in list(nf.uids)]
    return Series(uids, [y[indptr[i] : indptr[i + 1]] for i in range(len(uids))], "dataset saved with the model")


def frame_series(nf: Any, path: Path) -> tuple[Series, Any]:
    import pandas as pd

    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    cols = (nf.id_col, nf.time_col, nf.target_col)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise CliError(f"{path}: columns {missing} missing (expected {', '.join(cols)})")
    df = df[list(cols)].copy()
    df[nf.time_col] = pd.to_datetime(df[nf.time_col]) if not isinstance(nf.freq, int) else df[nf.time_col]
    df = df.sort_values([nf.id_col, nf.time_col])
    uids, values = [], []
    for uid, g in df.groupby(nf.id_col, sort=False):
        uids.append(str(uid))
        values.append(g[nf.target_col].to_numpy(np.float32))
    return Series(uids, values, str(path)), df


def nf_predict(nf: Any, model: Any, df: Any | None) -> dict[str, np.ndarray]:
    """nf.predict() per series -> {uid: (h,)}, for the imported model's column."""
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    model.trainer_kwargs["enable_progress_bar"] = False
    model.trainer_kwargs["logger"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = nf.predict(df=df) if df is not None else nf.predict()
    col = alias_of(model)
    out = {}
    for uid, g in pred.groupby(nf.id_col, sort=False):
        out[str(uid)] = g[col].to_numpy(np.float64)
    return out


def calibration_windows(series: Series, length: int, count: int = N_CALIB, seed: int = SEED) -> np.ndarray:
    """Windows that end before each series' last window (the one nf.predict reads), seeded draw."""
    windows = [v[s : s + length] for v in series.values for s in range(0, len(v) - length)]
    if not windows:
        raise CliError(f"no series is longer than input_size={length}: nothing to calibrate INT8 on")
    pick = np.sort(np.random.default_rng(seed).choice(len(windows), size=min(count, len(windows)), replace=False))
    return np.stack([windows[i] for i in pick]).astype(np.float32)


def float32_error(module: nn.Module, windows: np.ndarray, h: int) -> tuple[float, int]:
    """(max per-series relative error of the module in float32 against the same weights in float64, worst row)."""
    import copy

    with torch.no_grad():
        f32 = module(torch.from_numpy(windows.astype(np.float32))).numpy()
        f64 = copy.deepcopy(module).double()(torch.from_numpy(windows.astype(np.float64))).numpy()
    errs = importer.relative_errors(f32, f64, h)
    return float(errs.max()), int(np.argmax(errs))


# ----------------------------------------------------------------------------- CLI


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="directory written by NeuralForecast.save")
    p.add_argument("--out-repo", type=Path, required=True, help="model repository to write <name>/ into")
    p.add_argument("--artifacts", type=Path, required=True, help="checkpoint, calibration set and report go here")
    p.add_argument("--name", default="nhits", help="served model name (default %(default)s)")
    p.add_argument("--alias", help="which NHITS of the saved NeuralForecast (default: the only one)")
    p.add_argument("--df", type=Path, help="series to verify on (.csv / .parquet; default: the saved dataset)")
    p.add_argument("--calib-count", type=int, default=N_CALIB, help="INT8 calibration windows (%(default)s)")
    p.add_argument(
        "--bound",
        type=float,
        help="ONNX vs nf.predict relative bound (default: derived from the model, see the docstring)",
    )
    p.add_argument("--template-repo", type=Path, default=importer.TEMPLATE_REPOSITORY, help="configs to copy")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.model.is_dir():
        raise CliError(f"model directory {args.model} does not exist (NeuralForecast.save writes a directory)")
    if args.df is not None and not args.df.is_file():
        raise CliError(f"series file {args.df} does not exist")
    if args.calib_count < 1:
        raise CliError("--calib-count must be at least 1")
    if args.bound is not None and not args.bound > 0:
        raise CliError("--bound must be positive")
    importer.check_name(args.name)
    setup_logging(args.verbose)
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "onnxruntime.quantization.shape_inference"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    t0 = time.perf_counter()
    nf = load(args.model)
    model = pick(nf, args.alias)
    hp = check(nf, model)
    df = None
    if args.df is not None:
        series, df = frame_series(nf, args.df)
    else:
        series = stored_series(nf)
        if series is None:
            raise CliError(f"{args.model} holds no dataset (saved with save_dataset=False): pass --df with the series")

    torch.set_num_threads(1)  # shared 2-core machines (see export.onnx_export)
    module = build(model, hp)
    length, h = hp["input_size"], hp["h"]
    entry = Entry(
        args.name,
        "nhits",
        "nhits",
        (spec.Tensor(spec.WINDOW.name, "float32", (length,)),),
        (spec.Tensor(spec.FORECAST.name, "float32", (h,)),),
    )
    out_dir = args.artifacts / "byom" / args.name
    calib = calibration_windows(series, length, args.calib_count)
    reference = nf_predict(nf, model, df)
    full = [i for i, v in enumerate(series.values) if len(v) >= length and series.uids[i] in reference]
    short = [series.uids[i] for i, v in enumerate(series.values) if len(v) < length]
    if not full:
        raise CliError(f"no series has input_size={length} values: nothing to verify against nf.predict()")
    uids = [series.uids[i] for i in full]
    windows = np.stack([series.values[i][-length:] for i in full])
    ref = np.stack([reference[u] for u in uids])
    f32_err, worst = float32_error(module, windows, h)
    bound = importer.derive_bound(
        f32_err,
        args.bound,
        f"the same weights run in float32 and in float64 (worst series {uids[worst]})",
        f"the window scaler (scaler_type={hp['scaler_type']!r}) or large weights amplify float32 rounding: retrain "
        "with scaler_type='standard' or 'robust', or on series whose windows are not nearly constant",
    )
    with publish.Staging(args.out_repo) as stage:  # nothing reaches --out-repo unless every check passed
        importer.write_configs(entry, stage.repo, args.template_repo, PROG)
        fp32 = entry.version_dir(stage.repo) / spec.ONNX_FP32
        rec = importer.export_onnx(
            entry, module, (torch.from_numpy(calib[:2]),), fp32, importer.file_meta(PROG, args.model, args.name)
        )
        ours = importer.run_onnx(fp32, {"window": windows})[0]
        errs = importer.relative_errors(ours, ref, h)
        rec["verification"] = {
            "reference": "nf.predict(), one row per series",
            "series": len(uids),
            "series_skipped_shorter_than_input_size": short,
            "max_rel_err": float(errs.max()),
            "median_rel_err": float(np.median(errs)),
            "worst_series": uids[int(np.argmax(errs))],
        }
        rec["int8"] = importer.make_int8(
            entry,
            fp32,
            {"window": calib},
            out_dir / "calibration" / f"{entry.name}.npz",
            lambda p: float(importer.relative_errors(importer.run_onnx(p, {"window": windows})[0], ours, h).max()),
        )
        report = {
            "importer": PROG,
            "source": str(args.model),
            "neuralforecast": hp,
            "data": {"source": series.source, "series": len(series.uids), "calibration_windows": len(calib)},
            "served": {
                entry.name: f"window [{length}] -> forecast [{h}]: nf.predict() for a series' last {length} values"
            },
            "bound": {"onnx_vs_neuralforecast_rel_err": bound.as_dict(), "int8_vs_fp32_rel_err": importer.INT8_BOUND},
            "models": {entry.name: rec},
            "seconds": round(time.perf_counter() - t0, 3),
        }
        bad = (
            []
            if errs.max() <= bound.value
            else [f"ONNX vs nf.predict relative error {errs.max():.3g} > {bound.value:g}"]
        )
        importer.settle(
            report,
            bad,
            out_dir,
            args.out_repo,
            f"series {rec['verification']['worst_series']}; the same weights in float32 vs float64: {f32_err:.3g}; "
            f"bound {bound.source}",
        )
        write_json(fp32.with_name(fp32.name + ".json"), {"model": entry.name, "onnx_sha256": sha256_file(fp32), **rec})
        torch.save(
            {"config": module.core.config_dict(), "state_dict": module.core.state_dict()}, out_dir / "checkpoint.pt"
        )
        importer.commit(stage, [entry.name])
    print(
        f"imported {hp['alias']} from {args.model} as {entry.name} (window {length} -> {h}, scaler {hp['scaler_type']}) "
        f"into {args.out_repo}; ONNX vs nf.predict: {errs.max():.2g} over {len(uids)} series (bound {bound.value:.2g}, "
        f"float32 vs float64 {f32_err:.2g}); INT8 Q/DQ: {'yes' if rec['int8']['quantized'] else 'no, FP32 copy'}; "
        f"report {out_dir / 'report.json'}"
    )
    return 0


if __name__ == "__main__":
    run_main(PROG, main)
