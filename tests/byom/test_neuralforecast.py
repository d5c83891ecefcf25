"""neuralforecast NHITS models imported with `python -m byom.import_neuralforecast`: ONNX and Triton
reproduce `nf.predict()` for every series, in two configurations (max vs average pooling, linear vs
nearest interpolation, default vs custom downsampling and blocks, standard vs robust scaler); options
the project's nhits cannot express are refused naming the option.

Tolerance: per series, max|ours - nf.predict()| / max|nf.predict()| <= 1e-4 (both compute in float32;
measured about 1e-7).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from byom.importer import relative_errors
from common.cli import CliError, run_main
from common.triton import load_config
from models import spec

from .conftest import HAS_NEURALFORECAST, NF_CONFIGS, fit_nf, infer

# Not importorskip: importing neuralforecast (ray, lightning) takes seconds, and collection must stay quick.
pytestmark = pytest.mark.skipif(
    not HAS_NEURALFORECAST, reason="optional extra not installed: pip install -e '.[neuralforecast]'"
)

BOUND = 1e-4
KEYS = list(NF_CONFIGS)


def stacked(case) -> tuple[list[str], np.ndarray, np.ndarray]:
    uids = sorted(case.predictions)
    return uids, np.stack([case.windows[u] for u in uids]), np.stack([case.predictions[u] for u in uids])


@pytest.mark.parametrize("key", KEYS)
def test_onnx_reproduces_nf_predict_for_every_series(nf_cases, byom_repo, key):
    from byom.importer import run_onnx

    case = nf_cases[key]
    uids, windows, want = stacked(case)
    assert len(uids) == 2  # AirPassengersPanel: Airline1, Airline2
    got = run_onnx(spec.version_dir(case.name, byom_repo) / spec.ONNX_FP32, {"window": windows})[0]
    errs = relative_errors(got, want, NF_CONFIGS[key].get("h", 12))
    assert errs.max() <= BOUND, dict(zip(uids, errs, strict=True))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("key", KEYS)
def test_served_model_reproduces_nf_predict_for_every_series(nf_cases, byom_server, key, protocol):
    case = nf_cases[key]
    uids, windows, want = stacked(case)
    got = infer(byom_server, case.name, windows, protocol)
    assert relative_errors(got, want, want.shape[1]).max() <= BOUND


def test_the_two_configurations_differ_where_the_module_had_to_follow(nf_cases, byom_repo):
    reports = {
        k: json.loads((c.artifacts / "byom" / c.name / "report.json").read_text())["neuralforecast"]
        for k, c in nf_cases.items()
    }
    a, b = reports["maxpool_standard"], reports["avgpool_robust"]
    for field in ("pooling_mode", "interpolation_mode", "scaler_type", "n_freq_downsample", "n_blocks"):
        assert a[field] != b[field], field
    for key, case in nf_cases.items():
        cfg = load_config(byom_repo / case.name / "configs/cpu.pbtxt")
        assert [tuple(i.dims) for i in cfg.input] == [(NF_CONFIGS[key]["input_size"],)]
        assert [tuple(o.dims) for o in cfg.output] == [(12,)]
        assert (
            cfg.dynamic_batching == load_config(spec.ROOT / "model_repository/nhits/configs/cpu.pbtxt").dynamic_batching
        )


def test_the_default_bound_is_derived_from_the_model(nf_cases):
    for case in nf_cases.values():
        report = json.loads((case.artifacts / "byom" / case.name / "report.json").read_text())
        bound = report["bound"]["onnx_vs_neuralforecast_rel_err"]
        assert bound["source"].startswith("derived")
        assert bound["value"] == max(1e-5, min(1e-4, 4 * bound["float32_vs_float64_rel_err"]))
        assert report["models"][case.name]["verification"]["max_rel_err"] <= bound["value"]


def test_an_nhits_that_float32_cannot_hold_is_refused_saying_why_and_what_to_change():
    """An NHITS under the `invariant` scaler (asinh in, sinh out) whose block forecasts reach 100 in scaled
    units: sinh(100) ~ 1e43 is beyond float32's range. Checked on the module the importer builds."""
    import torch

    from byom.import_neuralforecast import WindowScaled, float32_error
    from byom.importer import derive_bound
    from models.nhits import NHITS, NHITSConfig

    torch.manual_seed(0)
    core = NHITS(NHITSConfig(input_size=24, h=12, hidden=16))
    with torch.no_grad():
        core.blocks[-1].layers[-1].bias[24:] = 100.0  # the forecast knots of the last block
    module = WindowScaled(core, "invariant", 1e-6).eval()
    windows = (100 + np.random.default_rng(0).standard_normal((4, 24)).cumsum(axis=1)).astype(np.float32)
    err, _ = float32_error(module, windows, 12)
    assert not err <= 1e-4
    with pytest.raises(CliError, match=r"cannot be served in float32: .* differ by inf .*scaler_type"):
        derive_bound(err, None, "the same weights run in float32 and in float64", "change scaler_type")


# -- refused options -------------------------------------------------------------------------------


def _unfitted(local_scaler_type=None, **config):
    from neuralforecast import NeuralForecast
    from neuralforecast.models import NHITS

    from .conftest import NF_COMMON, quiet_lightning

    quiet_lightning()
    model = NHITS(**{**NF_COMMON, "input_size": 24, **config})
    return NeuralForecast(models=[model], freq="MS", local_scaler_type=local_scaler_type), model


def _mq_loss():
    from neuralforecast.losses.pytorch import MQLoss

    return MQLoss(level=[80])


def _distribution_loss():
    from neuralforecast.losses.pytorch import DistributionLoss

    return DistributionLoss("Normal")


REFUSALS = {  # the option the error must name -> NHITS / NeuralForecast arguments that use it
    "futr_exog_list": lambda: dict(futr_exog_list=["promo"]),
    "hist_exog_list": lambda: dict(hist_exog_list=["volume"]),
    "stat_exog_list": lambda: dict(stat_exog_list=["market"]),
    "exclude_insample_y": lambda: dict(exclude_insample_y=True),
    "local_scaler_type": lambda: dict(local_scaler_type="standard"),
    "loss=MQLoss": lambda: dict(loss=_mq_loss()),
    "loss=DistributionLoss": lambda: dict(loss=_distribution_loss()),
    "scaler_type='revin'": lambda: dict(scaler_type="revin"),
    "interpolation_mode='cubic'": lambda: dict(interpolation_mode="cubic"),
    "activation='Tanh'": lambda: dict(activation="Tanh"),
    "mlp_units": lambda: dict(mlp_units=[[64, 32], [32, 32]]),
}


@pytest.mark.parametrize("option", list(REFUSALS))
def test_an_option_the_project_cannot_express_is_refused_naming_it(air_passengers, option):
    from byom import import_neuralforecast
    from byom.importer import Unsupported

    nf, model = _unfitted(**REFUSALS[option]())
    with pytest.raises(Unsupported, match=re.escape(option)):
        import_neuralforecast.check(nf, model)


def test_the_command_line_refuses_a_saved_model_with_one_line_naming_the_option(air_passengers, tmp_path, capsys):
    from byom import import_neuralforecast

    nf = fit_nf(air_passengers, local_scaler_type="standard", input_size=24, max_steps=1)
    nf.save(str(tmp_path / "scaled"), overwrite=True)
    argv = ["--model", str(tmp_path / "scaled"), "--out-repo", str(tmp_path / "r"), "--artifacts", str(tmp_path / "a")]
    with pytest.raises(SystemExit) as exit_info:
        run_main(import_neuralforecast.PROG, import_neuralforecast.main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1
    assert len(err) == 1 and "local_scaler_type='standard'" in err[0], err
    assert not (tmp_path / "r" / "nhits").exists()  # refused before anything was written


# -- no code from the user's files -----------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def test_a_legacy_directory_with_a_hostile_pickle_is_refused_and_its_payload_never_runs(tmp_path):
    import pickle

    from byom import import_neuralforecast

    marker = tmp_path / "payload-ran"
    saved = tmp_path / "nf_model"
    saved.mkdir()
    (saved / "dataset.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    (saved / "alias_to_model.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    (saved / "NHITS_0.ckpt").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CliError):
        import_neuralforecast.load(saved)
    assert not marker.exists(), "a file of the directory ran code"


def test_the_import_asks_neuralforecast_for_no_pickles_explicitly(nf_cases, monkeypatch):
    """Not left to neuralforecast's default: the call itself says allow_pickle=False (a later release could flip
    the default, as 3.x once read pickles)."""
    from neuralforecast import NeuralForecast

    from byom import import_neuralforecast

    seen = {}
    real = NeuralForecast.load

    def recording(path, *args, **kwargs):
        seen.update(kwargs)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(NeuralForecast, "load", staticmethod(recording))
    case = next(iter(nf_cases.values()))
    import_neuralforecast.load(case.path)
    assert seen.get("allow_pickle") is False
