import numpy as np
import pytest
import torch

from models import registry, spec, train


def _fits(shape, dims) -> bool:
    """A batch of 5 of `dims`, where spec.SEQUENCE (the text encoder's token axis) matches any length."""
    return (
        len(shape) == 1 + len(dims)
        and shape[0] == 5
        and all(d in (spec.SEQUENCE, s) for s, d in zip(shape[1:], dims, strict=False))
    )


@pytest.mark.parametrize("name", registry.NAMES)
def test_every_model_loads_in_eval_mode_and_runs_on_its_example_inputs(tiny_artifacts, name):
    out, report = tiny_artifacts
    model = registry.load_model(name, out)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.state_dict().values() if p.is_floating_point())
    inputs = registry.example_inputs(name, out, "test", 5)
    ms = spec.MODELS[name]
    if name == "reservoir_stream":  # the state travels beside the tick; its size is the reservoir's
        assert tuple(inputs[1].shape) == (5, report["reservoir"]["config"]["units"])
    for tensor, want in zip(inputs, ms.inputs, strict=False):
        assert _fits(tensor.shape, want.dims) and str(tensor.dtype) == f"torch.{want.dtype}", name
    with torch.no_grad():
        outputs = model(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    for tensor, want in zip(outputs, ms.outputs, strict=False):
        assert _fits(tensor.shape, want.dims) and str(tensor.dtype) == f"torch.{want.dtype}", name
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all()


def test_stream_example_state_continues_the_window(tiny_artifacts):
    out, _ = tiny_artifacts
    tick, state = registry.example_inputs("reservoir_stream", out, "test", 3)
    (window,) = registry.example_inputs("reservoir", out, "test", 3)
    assert state.shape == (3, registry.load_model("reservoir", out).cfg.units)
    with torch.no_grad():
        forecast, _ = registry.load_model("reservoir_stream", out)(tick, state)
        torch.testing.assert_close(forecast, registry.load_model("reservoir", out)(window), rtol=1e-4, atol=1e-3)


def test_example_inputs_are_deterministic_and_differ_by_split(tiny_artifacts):
    out, _ = tiny_artifacts
    a = registry.example_inputs("similarity", out, "train", 4)[0]
    torch.testing.assert_close(a, registry.example_inputs("similarity", out, "train", 4)[0])
    assert not torch.equal(a, registry.example_inputs("similarity", out, "test", 4)[0])


def test_unknown_model_and_missing_checkpoint_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        registry.load_model("bert", tmp_path)
    with pytest.raises(FileNotFoundError, match="models.train"):
        registry.load_model("nhits", tmp_path)


def test_report_holds_test_metrics_against_seasonal_naive(tiny_artifacts):
    out, report = tiny_artifacts
    assert set(report["test_metrics"]) == {"seasonal_naive", "nhits", "reservoir", "forecast_blend"}
    assert report["test_metrics"]["seasonal_naive"]["mae_improvement_pct"] == 0.0
    assert np.isfinite(report["reservoir"]["mackey_glass_one_step_nrmse"])
    assert (out / "reports" / "train.md").read_text().startswith("# Train report")


def test_cli_rejects_an_unwritable_out_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert train.main(["--out", str(blocker / "sub")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


@pytest.mark.parametrize("argv", [["--out", "x", "--n-items", "3"], ["--out", "x", "--bogus"], []])
def test_cli_rejects_bad_flags_in_one_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
