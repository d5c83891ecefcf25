import numpy as np
import torch

from models import data, registry
from models.blend import Blend, fit_weights


def test_fit_recovers_known_convex_weights():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 24)), rng.normal(size=(500, 24))
    w = np.linspace(0.1, 0.9, 24)
    np.testing.assert_allclose(fit_weights(a, b, w * a + (1 - w) * b), w, atol=1e-6)


def test_weights_are_clipped_to_a_convex_combination():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 24)), rng.normal(size=(200, 24))
    w = fit_weights(a, b, 2 * a - b)  # least squares would say w = 2
    np.testing.assert_allclose(w, 1.0)


def test_blend_applies_the_weights_per_step():
    w = np.linspace(0, 1, 24, dtype=np.float32)
    n, r = torch.ones(3, 24), torch.zeros(3, 24)
    torch.testing.assert_close(Blend(w)(n, r), torch.from_numpy(w).expand(3, 24))


def test_trained_blend_weights_are_the_fit_on_validation(tiny_artifacts):
    out, report = tiny_artifacts
    x, y = data.load_windows(out, "validation")
    nhits, reservoir = registry.load_model("nhits", out), registry.load_model("reservoir", out)
    with torch.no_grad():
        want = fit_weights(nhits(torch.from_numpy(x)).numpy(), reservoir.predict(x).numpy(), y)
    blend = registry.load_model("forecast_blend", out)
    np.testing.assert_allclose(blend.w_nhits.numpy(), want, atol=1e-5)
    np.testing.assert_allclose(report["blend_weights_nhits"], want, atol=1e-4)
