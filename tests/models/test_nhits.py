import numpy as np
import onnxruntime as ort
import pytest
import torch

from models import spec
from models.nhits import NHITS, NHITSConfig

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript ONNX exporter


@pytest.fixture(scope="module")
def model() -> NHITS:
    torch.manual_seed(0)
    return NHITS().eval()


def windows(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(spec.INPUT_SIZE)
    w = 100 + 10 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 2, (n, spec.INPUT_SIZE))
    return torch.from_numpy(w.astype(np.float32))


def test_output_shape_and_dtype(model):
    with torch.no_grad():
        out = model(windows(5))
    assert out.shape == (5, spec.HORIZON) and out.dtype == torch.float32


def test_architecture_is_neuralforecast_default(model):
    cfg = NHITSConfig()
    assert len(model.blocks) == 3
    for block, pool, down in zip(model.blocks, cfg.n_pool_kernel_size, cfg.n_freq_downsample, strict=True):
        linears = [m for m in block.layers if isinstance(m, torch.nn.Linear)]
        assert linears[0].in_features == -(-spec.INPUT_SIZE // pool)  # ceil-mode max pooling
        assert [m.out_features for m in linears[:-1]] == [512, 512, 512]
        assert linears[-1].out_features == spec.INPUT_SIZE + max(spec.HORIZON // down, 1)
        assert block.pool.kernel_size == pool and block.pool.ceil_mode


@pytest.mark.parametrize(("scale", "shift"), [(3.0, 0.0), (0.01, 0.0), (2.0, 50.0)])
def test_forecast_is_scale_and_shift_equivariant(model, scale, shift):
    w = windows(4)
    with torch.no_grad():
        torch.testing.assert_close(model(w * scale + shift), model(w) * scale + shift, rtol=1e-4, atol=1e-4 * scale)


def test_constant_window_does_not_divide_by_zero(model):
    with torch.no_grad():
        out = model(torch.full((2, spec.INPUT_SIZE), 7.0))
    assert torch.isfinite(out).all()


def test_exports_to_onnx_with_a_dynamic_batch(model, tmp_path):
    path = tmp_path / "nhits.onnx"
    torch.onnx.export(
        model,
        (windows(2),),
        str(path),
        input_names=["window"],
        output_names=["forecast"],
        dynamic_axes={"window": {0: "batch"}, "forecast": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        w = windows(n, seed=n)
        with torch.no_grad():
            want = model(w).numpy()
        np.testing.assert_allclose(sess.run(None, {"window": w.numpy()})[0], want, rtol=1e-4, atol=1e-3)
