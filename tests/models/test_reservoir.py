import numpy as np
import pytest
import torch

from models import data, spec
from models.reservoir import (
    INPUT_CHUNK,
    Reservoir,
    ReservoirConfig,
    ReservoirStream,
    dense_matrix,
    make_weights,
    ridge,
)
from models.train import fit_reservoir

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript ONNX exporter

# The project's reservoir (6 blocks of 20, leak folded, fused graph) and the former one (one Bernoulli W, the
# leaky update node by node: what an imported ESN keeps).
CFG = ReservoirConfig(units=120, window=30, spectral_radius=0.85, leak=0.4, input_scaling=0.3, block_size=20, seed=5)
FORMER = ReservoirConfig(
    **{**CFG.__dict__, "topology": "random", "density": 0.1, "fold_leak": False, "graph": "stepwise"}
)


def fitted(cfg: ReservoirConfig) -> Reservoir:
    m = Reservoir(cfg)
    m.fit_transform(data.make_series(data.SeriesConfig(n_series=3, seed=1)))
    rng = np.random.default_rng(0)
    m.set_readout(rng.normal(0, 0.01, (spec.HORIZON, cfg.units + 2)))
    return m.eval()


FOLDED = ReservoirConfig(**{**CFG.__dict__, "fold_leak": True})


@pytest.fixture(scope="module", params=[CFG, FOLDED, FORMER], ids=["blocks", "blocks-folded", "former"])
def model(request) -> Reservoir:
    return fitted(request.param)


def windows(n: int, t: int = CFG.window, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(20, 200, (n, t)).astype(np.float32))


def numpy_states(m: Reservoir, u: np.ndarray) -> np.ndarray:
    """x_t = (1 - a) x_{t-1} + a tanh(W_in u_t + W x_{t-1} + b), x_0 = 0, in float64, with the whole N x N W and
    the update's leak (1 when folded into W); returns all x_t (B, T, N)."""
    w = dense_matrix(m.w.numpy().astype(np.float64), m.cfg)
    w_in, b = (t.numpy().astype(np.float64) for t in (m.w_in, m.bias))
    a = m.cfg.step_leak
    x = np.zeros((u.shape[0], w.shape[0]))
    out = []
    for t in range(u.shape[1]):
        x = (1 - a) * x + a * np.tanh(u[:, t : t + 1] * w_in[None, :] + x @ w.T + b)
        out.append(x)
    return np.stack(out, axis=1)


def radius(w: np.ndarray) -> float:
    return float(np.max(np.abs(np.linalg.eigvals(w.astype(np.float64)))))


def test_spectral_radius_is_the_configured_one():
    w, _, _ = make_weights(FORMER)
    assert radius(w) == pytest.approx(FORMER.spectral_radius, rel=1e-5)
    assert 0.05 < np.mean(w != 0) < 0.15  # sparse at the configured density
    block, w_in, b = make_weights(CFG)
    assert block.shape == (CFG.block_size, CFG.block_size)
    assert radius(dense_matrix(block, CFG)) == pytest.approx(CFG.spectral_radius, rel=1e-5)  # every block's


def test_the_folded_leak_is_the_leaky_integrators_first_order_form():
    a = CFG.leak
    block, w_in, b = make_weights(CFG)
    folded, f_in, f_b = make_weights(FOLDED)
    np.testing.assert_allclose(folded, (1 - a) * np.eye(CFG.block_size) + a * block, atol=1e-6)
    np.testing.assert_allclose(f_in, a * w_in, rtol=1e-6)
    np.testing.assert_allclose(f_b, a * b, rtol=1e-6)
    # where tanh is linear (small states and inputs, no bias) the two updates agree to third order:
    # x' = (1-a) x + a tanh(W x + W_in u)  ~  tanh(((1-a) I + a W) x + a W_in u)
    x = np.random.default_rng(0).uniform(-1e-3, 1e-3, (2, CFG.units))
    leaky = (1 - a) * x + a * np.tanh(x @ dense_matrix(block.astype(np.float64), CFG).T + 1e-3 * w_in)
    first_order = np.tanh(x @ dense_matrix(folded.astype(np.float64), CFG).T + 1e-3 * f_in)
    np.testing.assert_allclose(first_order, leaky, atol=1e-8)


def test_the_fused_graph_computes_the_same_update_as_the_node_by_node_one(model):
    stepwise = Reservoir(
        ReservoirConfig(**{**model.cfg.__dict__, "graph": "stepwise"}),
        weights=(model.w.numpy(), model.w_in.numpy(), model.bias.numpy()),
    )
    stepwise.set_readout(model.readout_matrix())
    stepwise.in_loc.copy_(model.in_loc)
    stepwise.in_scale.copy_(model.in_scale)
    fused = Reservoir(
        ReservoirConfig(**{**model.cfg.__dict__, "graph": "fused"}),
        weights=(model.w.numpy(), model.w_in.numpy(), model.bias.numpy()),
    )
    fused.load_state_dict(stepwise.state_dict())
    win = windows(5, t=2 * INPUT_CHUNK + 5)  # chunks of INPUT_CHUNK steps and a shorter last one
    with torch.no_grad():
        torch.testing.assert_close(fused.run(win), stepwise.run(win), rtol=1e-5, atol=0)


def test_a_checkpoint_written_before_topologies_is_the_former_reservoir():
    legacy = {k: v for k, v in FORMER.__dict__.items() if k not in ("topology", "block_size", "fold_leak", "graph")}
    assert ReservoirConfig.from_dict(legacy) == ReservoirConfig(**{**FORMER.__dict__, "block_size": 100})


def test_same_seed_gives_the_same_weights_and_another_seed_does_not():
    for a, b in zip(make_weights(CFG), make_weights(CFG), strict=True):
        np.testing.assert_array_equal(a, b)
    other = ReservoirConfig(**{**CFG.__dict__, "seed": 6})
    assert not np.array_equal(make_weights(CFG)[0], make_weights(other)[0])


def test_update_equals_the_numpy_equation(model):
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 0.5, (4, CFG.units)).astype(np.float32)
    u = rng.normal(0, 1, (4, 1)).astype(np.float32)
    got = model.step(torch.from_numpy(u), torch.from_numpy(x)).numpy()
    w, w_in, b, a = (
        dense_matrix(model.w.numpy(), model.cfg),
        model.w_in.numpy(),
        model.bias.numpy(),
        model.cfg.step_leak,
    )
    want = (1 - a) * x + a * np.tanh(w_in[None, :] * u + x @ w.T + b)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_windowed_forward_equals_numpy_from_zero_state(model):
    win = windows(5)
    u = model.encode(win).numpy().astype(np.float64)
    x_t = numpy_states(model, u)[:, -1]
    feats = np.concatenate([np.ones((5, 1)), u[:, -1:], x_t], axis=1)
    want = np.exp(model.in_loc.item() + model.in_scale.item() * (u[:, -1:] + feats @ model.readout_matrix().T))
    np.testing.assert_allclose(model(win).numpy(), want, rtol=1e-4)


def test_sparse_training_states_equal_the_dense_inference_states(model):
    u = model.encode(windows(7))
    np.testing.assert_allclose(model.final_states(u, batch=3).numpy(), numpy_states(model, u.numpy())[:, -1], atol=1e-5)
    np.testing.assert_allclose(model.predict(windows(7)).numpy(), model(windows(7)).numpy(), rtol=1e-5)


def test_transform_is_a_fixed_per_tick_map(model):
    win = windows(3)
    per_tick = torch.cat([model.encode(win[:, t : t + 1]) for t in range(win.shape[1])], dim=1)
    torch.testing.assert_close(model.encode(win), per_tick, rtol=0, atol=0)


def test_stream_steps_reproduce_the_window_model_and_run(model):
    stream = ReservoirStream(model).eval()
    win = windows(4)
    state = torch.zeros(4, CFG.units)
    per_tick = []
    with torch.no_grad():
        for t in range(win.shape[1]):
            fc, state = stream(win[:, t : t + 1], state)
            per_tick.append(fc)
        ran = model.run(win)
        torch.testing.assert_close(fc, model(win), rtol=1e-6, atol=0)
    assert ran.shape == (4, CFG.window, spec.HORIZON)
    torch.testing.assert_close(torch.stack(per_tick, dim=1), ran, rtol=1e-6, atol=0)


def test_readout_is_the_closed_form_ridge_solution():
    series = data.make_series(data.SeriesConfig(n_series=3, seed=2))
    cfg = ReservoirConfig(units=80, block_size=20, seed=1)
    train, val = series[:, :1500], series[:, 1500:2300]
    vx, vy = data.windows_from_series(val)
    m, val_forecast = fit_reservoir(cfg, train, vx, vy, n_windows=100)
    np.testing.assert_allclose(val_forecast, m.predict(vx).numpy(), rtol=1e-4)

    # The features of the zero-start train windows the readout was fitted on, and the normal equations in numpy.
    x, y = data.windows_from_series(train)
    pick = np.sort(np.random.default_rng([cfg.seed, 3]).permutation(len(x))[:100])
    s, u = m.features(x[pick])
    target = (np.log(y[pick].astype(np.float64)) - m.in_loc.item()) / m.in_scale.item() - u[:, -1:]
    lam = m.ridge_lambda
    want = np.linalg.solve(s.T @ s + lam * np.eye(s.shape[1]), s.T @ target).T
    np.testing.assert_allclose(m.readout_matrix(), want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_ridge_matches_the_textbook_formula():
    rng = np.random.default_rng(0)
    s, y = rng.normal(size=(50, 6)), rng.normal(size=(50, 3))
    want = (np.linalg.inv(s.T @ s + 0.5 * np.eye(6)) @ s.T @ y).T
    np.testing.assert_allclose(ridge(s, y, 0.5), want, rtol=1e-10)


def test_window_and_stream_models_export_to_onnx_with_a_dynamic_batch(model, tmp_path):
    import onnxruntime as ort

    def export(module, args, names_in, names_out, path):
        axes = {n: {0: "batch"} for n in (*names_in, *names_out)}
        torch.onnx.export(
            module, args, str(path), input_names=names_in, output_names=names_out, dynamic_axes=axes, dynamo=False
        )
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    win = windows(3, seed=4)
    sess = export(model, (windows(2),), ["window"], ["forecast"], tmp_path / "r.onnx")
    with torch.no_grad():
        np.testing.assert_allclose(sess.run(None, {"window": win.numpy()})[0], model(win).numpy(), rtol=1e-4)

    stream = ReservoirStream(model).eval()
    state = torch.zeros(3, CFG.units)
    sess = export(stream, (win[:, :1], state), ["tick", "state"], ["forecast", "state_out"], tmp_path / "s.onnx")
    s = state.numpy()
    for t in range(model.cfg.window):
        fc, s = sess.run(None, {"tick": win[:, t : t + 1].numpy(), "state": s})
    with torch.no_grad():
        np.testing.assert_allclose(fc, model(win).numpy(), rtol=1e-4)
