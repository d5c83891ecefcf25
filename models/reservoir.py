"""Echo state network: tanh reservoir with a ridge readout.

    u_t = (log y_t - loc) / scale                                 fixed global transform (fitted on train)
    x_t = (1 - a) x_{t-1} + a tanh(W_in u_t + W x_{t-1} + b)      x_0 = 0   (the leaky integrator)
    r_t = W_out [1; u_t; x_t]                                      (H,) predicted u_{t+h} - u_t
    forecast_{t+h} = exp(loc + scale (u_t + r_t))                 = y_t * exp(scale r_t)

W, W_in and b are drawn from a seed and never trained; only W_out is fitted, in closed form, on
states of zero-start windows. The transform is per tick and stateless, so a server can feed one
tick at a time and keep only x (`ReservoirStream`), and get the same forecast as the windowed model.

The project's reservoir (topology "blocks", the default) is built for a 168-step window in about a
millisecond at batch 1 (`python -m export.reservoir_graphs` times the candidates; README "Performance"):

- W is block-diagonal, `units / block_size` copies of one dense random block (block_size x block_size,
  at the configured spectral radius), so one step is a single small GEMM over the state laid out as
  (B * blocks, block_size): 40 kB of weights, not the 4 MB a dense 1000 x 1000 matrix reads per step;
- the "fused" graph computes the input projection W_in u_t + b for INPUT_CHUNK steps at once, outside
  the recurrence, and carries s = x / a: s_t = (1 - a) s_{t-1} + tanh((a W) s_{t-1} + W_in u_t + b), a
  Gemm + Tanh (ONNX Runtime fuses them into one kernel), a Mul and an Add per step;
- `fold_leak` (off by default) folds the leak into W, x_t = tanh(((1 - a) I + a W) x_{t-1} + a (W_in u_t + b)),
  the leaky integrator's first-order form: one kernel per step, but its readouts amplify float32 rounding
  about twice as much at the same ridge (measured on the validation split), which cost 3 % of test MAE
  under the float32 bound of models.train.

Topology "random" is the former reservoir (a Bernoulli(density) N x N W); an imported ESN
(byom/import_reservoirpy.py) brings its own dense W and gets either the "fused" graph or, where that
misses its import bound, the "stepwise" graph: the equations above node by node.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import spec

log = logging.getLogger(__name__)

EPS = 1e-6  # ticks are clamped to this before the log (prices and sales are positive)
TRANSFORMS = ("log", "identity")
TOPOLOGIES = ("blocks", "random")
GRAPHS = ("fused", "stepwise")
# Steps whose input projection one set of ONNX nodes computes ahead of the recurrence: the projection of a
# chunk, (B, units, INPUT_CHUNK) floats, stays in a core's L2 up to batch 64 (all 168 steps at once stream
# B x 672 kB through memory: measured 2x slower at batch 16), and the chunks add ~0.5 node per step.
INPUT_CHUNK = 12


@dataclass(frozen=True)
class ReservoirConfig:
    units: int = spec.RESERVOIR_UNITS
    window: int = spec.INPUT_SIZE
    horizon: int = spec.HORIZON
    spectral_radius: float = 0.95
    leak: float = 0.3
    input_scaling: float = 0.1
    bias_scaling: float = 0.05
    density: float = 0.01  # topology "random": about 10 recurrent connections per unit
    seed: int = 0
    # "log": the transform of the module docstring. "identity": u_t = (y_t - loc) / scale and the output is
    # loc + scale r_t (no log, no exp, no u_t added): a plain ESN readout, e.g. one imported from ReservoirPy.
    transform: str = "log"
    topology: str = "blocks"  # see the module docstring
    block_size: int = 100  # topology "blocks": units per block (units must be a multiple)
    fold_leak: bool = False  # x_t = tanh(((1 - a) I + a W) x_{t-1} + a (W_in u_t + b)): module docstring
    graph: str = "fused"  # the ONNX graph forward() traces to: "fused" or "stepwise" (module docstring)

    @property
    def blocks(self) -> int:
        """How many copies of the recurrent block W holds (1: W is the whole N x N matrix)."""
        return self.units // self.block_size if self.topology == "blocks" else 1

    @property
    def step_leak(self) -> float:
        """The leak of the update as the module computes it: 1 (no separate leak term) when it is folded."""
        return 1.0 if self.fold_leak else self.leak

    def check(self) -> ReservoirConfig:
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform {self.transform!r} is not one of {TRANSFORMS}")
        if self.topology not in TOPOLOGIES or self.graph not in GRAPHS:
            raise ValueError(f"topology {self.topology!r} / graph {self.graph!r}: expected {TOPOLOGIES} / {GRAPHS}")
        if self.topology == "blocks" and (self.block_size < 1 or self.units % self.block_size):
            raise ValueError(f"units {self.units} is not a multiple of block_size {self.block_size}")
        if not 0.0 < self.leak <= 1.0:
            raise ValueError(f"leak {self.leak} must be in (0, 1]")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> ReservoirConfig:
        """A config from a checkpoint; one written before topologies existed is the former random reservoir."""
        if "topology" not in d:
            d = {**d, "topology": "random", "fold_leak": False, "graph": "stepwise"}
        return cls(**d)


def make_weights(cfg: ReservoirConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W, W_in (N,), b (N,)) float32 as the update uses them: W is the block (block_size, block_size) of
    topology "blocks" or the (N, N) matrix of "random" (Bernoulli(density)), at the configured spectral
    radius; with fold_leak, W' = (1 - a) I + a W and W_in, b scaled by a (the module docstring)."""
    cfg.check()
    rng = np.random.default_rng([cfg.seed, 17])
    n = cfg.units
    if cfg.topology == "blocks":
        m = cfg.block_size
        w = rng.uniform(-1.0, 1.0, (m, m))
    else:
        w = np.where(rng.random((n, n)) < cfg.density, rng.uniform(-1.0, 1.0, (n, n)), 0.0)
    radius = np.max(np.abs(np.linalg.eigvals(w)))
    w *= cfg.spectral_radius / radius
    w_in = rng.uniform(-1.0, 1.0, n) * cfg.input_scaling
    b = rng.uniform(-1.0, 1.0, n) * cfg.bias_scaling
    if cfg.fold_leak:
        a = cfg.leak
        w, w_in, b = (1.0 - a) * np.eye(len(w)) + a * w, a * w_in, a * b
    return w.astype(np.float32), w_in.astype(np.float32), b.astype(np.float32)


def dense_matrix(w: np.ndarray, cfg: ReservoirConfig) -> np.ndarray:
    """The whole (N, N) recurrent matrix of W as make_weights returns it (the block repeated on the diagonal)."""
    return np.kron(np.eye(cfg.blocks, dtype=w.dtype), w) if cfg.blocks > 1 else w


class Reservoir(nn.Module):
    """forward(window (B, T) float32) -> forecast (B, H): T steps from x = 0, readout at the last step."""

    def __init__(self, cfg: ReservoirConfig, weights: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None):
        super().__init__()
        self.cfg = cfg.check()
        w, w_in, b = weights if weights is not None else make_weights(cfg)
        n, h = cfg.units, cfg.horizon
        want = (cfg.block_size,) * 2 if cfg.blocks > 1 else (n, n)
        if tuple(w.shape) != want:
            raise ValueError(f"recurrent weights of shape {tuple(w.shape)}, expected {want} for {cfg.topology}")
        self.register_buffer("w", torch.from_numpy(w))  # (M, M): one block (M = block_size), or the (N, N) W
        self.register_buffer("w_in", torch.from_numpy(w_in))  # (N,)
        self.register_buffer("bias", torch.from_numpy(b))  # (N,)
        self.register_buffer("in_loc", torch.tensor(0.0))
        self.register_buffer("in_scale", torch.tensor(1.0))
        self.register_buffer("readout_bias", torch.zeros(h))  # (H,)
        self.register_buffer("readout_u", torch.zeros(h))  # (H,)
        self.register_buffer("readout_x", torch.zeros(h, n))  # (H, N)

    # one tick ------------------------------------------------------------------
    def encode(self, y: torch.Tensor) -> torch.Tensor:
        if self.cfg.transform == "identity":
            return (y - self.in_loc) / self.in_scale
        return (torch.log(torch.clamp(y, min=EPS)) - self.in_loc) / self.in_scale

    def recurrent(self, x: torch.Tensor) -> torch.Tensor:
        """W x for x (B, N): one (B * blocks, M) x (M, M) product for topology "blocks"."""
        if self.cfg.blocks == 1:
            return F.linear(x, self.w)
        return F.linear(x.reshape(-1, self.cfg.block_size), self.w).reshape(-1, self.cfg.units)

    def step(self, u_t: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """u_t (B, 1), x (B, N) or None for the zero state -> new x (B, N): the update node by node."""
        a = self.cfg.step_leak
        if x is None:  # W @ 0 = 0: the same numbers as the general step, without a zeros tensor in the graph
            return a * torch.tanh(self.bias + u_t * self.w_in) if a != 1.0 else torch.tanh(self.bias + u_t * self.w_in)
        h = torch.tanh(self.recurrent(x) + self.bias + u_t * self.w_in)
        return h if a == 1.0 else (1.0 - a) * x + a * h

    # the fused graph ---------------------------------------------------------------
    def projections(self, u: torch.Tensor) -> list[torch.Tensor]:
        """u (B, c) -> c tensors (B * blocks, M): W_in u_t + b for each of the c steps, computed at once in the
        state's layout (the block of unit n = g * M + j is row b * blocks + g, column j)."""
        g = self.cfg.blocks
        m = self.cfg.units // g
        c = u.shape[1]
        p = u[:, None, :, None] * self.w_in.reshape(g, 1, m) + self.bias.reshape(g, 1, m)  # (B, G, c, M)
        return list(torch.split(p.reshape(-1, c * m), m, dim=1))

    def fused_step(self, p_t: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        """p_t, s (B * blocks, M) -> new s. The fused graph carries s = x / a, so a step is Gemm(s, (a W)^T, p_t) +
        Tanh, and with a leak that is not folded, s' = (1 - a) s + that: a Mul and an Add (x = a s at the end)."""
        if s is None:
            return torch.tanh(p_t)
        a = self.cfg.step_leak
        h = torch.tanh(torch.addmm(p_t, s, self.w.t() * a if a != 1.0 else self.w.t()))
        return h if a == 1.0 else (1.0 - a) * s + h

    def fused_states(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, T) encoded ticks -> the state x after each tick from zero, as a (T, B, N) tensor: the recurrence
        the fused graph runs, in INPUT_CHUNK-step chunks."""
        out, s = [], None
        for t0 in range(0, u.shape[1], INPUT_CHUNK):
            for p_t in self.projections(u[:, t0 : t0 + INPUT_CHUNK]):
                s = self.fused_step(p_t, s)
                out.append(s)
        return self.unscaled(torch.stack(out)).reshape(len(out), -1, self.cfg.units)

    def fused_final(self, u: torch.Tensor, scaled: bool = False) -> torch.Tensor:
        """u (B, T) -> x_T (B, N) through the fused recurrence (what forward() exports); `scaled`: s_T = x_T / a."""
        s = None
        for t0 in range(0, u.shape[1], INPUT_CHUNK):
            for p_t in self.projections(u[:, t0 : t0 + INPUT_CHUNK]):
                s = self.fused_step(p_t, s)
        return (s if scaled else self.unscaled(s)).reshape(-1, self.cfg.units)

    @torch.no_grad()
    def stream_state(self, u: torch.Tensor) -> torch.Tensor:
        """The state ReservoirStream carries after the ticks u (B, T) from zero: s = x / a with the fused graph
        (its arithmetic is the window's, step for step), x with the stepwise one."""
        return self.fused_final(u, scaled=True) if self.cfg.graph == "fused" else self.final_states(u)

    def unscaled(self, s: torch.Tensor) -> torch.Tensor:
        """x = a s (the fused graph's state is s = x / a)."""
        a = self.cfg.step_leak
        return s if a == 1.0 else s * a

    def readout(self, u_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """u_t (B, 1), x (B, N) -> forecast (B, H) in raw units."""
        r = F.linear(x, self.readout_x, self.readout_bias) + u_t * self.readout_u  # (B, H)
        if self.cfg.transform == "identity":
            return self.in_loc + self.in_scale * r
        return torch.exp(self.in_loc + self.in_scale * (u_t + r))

    # windows -------------------------------------------------------------------
    def forward(self, window: torch.Tensor) -> torch.Tensor:
        u = self.encode(window)  # (B, T)
        if self.cfg.graph == "fused":
            return self.readout(u[:, -1:], self.fused_final(u))
        x = None
        for t in range(self.cfg.window):
            x = self.step(u[:, t : t + 1], x)
        return self.readout(u[:, -1:], x)

    def run(self, series: torch.Tensor) -> torch.Tensor:
        """series (B, T) -> (B, T, H): the readout after every tick, from the zero state."""
        u = self.encode(series)
        if self.cfg.graph == "fused":
            states = self.fused_states(u)  # (T, B, N)
            return torch.stack([self.readout(u[:, t : t + 1], states[t]) for t in range(len(states))], dim=1)
        x = None
        out = []
        for t in range(series.shape[1]):
            x = self.step(u[:, t : t + 1], x)
            out.append(self.readout(u[:, t : t + 1], x))
        return torch.stack(out, dim=1)

    # fitting -------------------------------------------------------------------
    def readout_matrix(self) -> np.ndarray:
        """(H, N + 2) readout over features [1; u_t; x_t]."""
        return torch.cat([self.readout_bias[:, None], self.readout_u[:, None], self.readout_x], dim=1).numpy()

    def set_readout(self, w_out: np.ndarray) -> None:
        w_out = torch.as_tensor(np.asarray(w_out, dtype=np.float32))
        self.readout_bias.copy_(w_out[:, 0])
        self.readout_u.copy_(w_out[:, 1])
        self.readout_x.copy_(w_out[:, 2:])

    def fit_transform(self, train_series: np.ndarray) -> None:
        """Global affine transform of log values (or of the values, transform "identity"), fitted once on the
        train split; NaN (the padding of a user's shorter series, the real profile's before a series starts) is not
        data."""
        v = train_series.astype(np.float64)
        v = np.log(np.maximum(v, EPS)) if self.cfg.transform == "log" else v
        if np.isnan(v).any():
            v = v[~np.isnan(v)]
        self.in_loc.fill_(float(v.mean()))
        self.in_scale.fill_(float(v.std()) or 1.0)

    @torch.no_grad()
    def final_states(self, u: torch.Tensor, batch: int = 4096) -> torch.Tensor:
        """u (B, T) encoded windows -> x_T (B, N), from zero state, for many windows: blocks in their
        (B * blocks, M) layout, a single W in sparse form and (N, B) layout."""
        if self.cfg.blocks > 1:
            return torch.cat([self.fused_final(u[i : i + batch]) for i in range(0, u.shape[0], batch)])
        w = sparse(self.w)
        a = self.cfg.step_leak
        w_in, b = self.w_in[:, None], self.bias[:, None]
        out = []
        for i in range(0, u.shape[0], batch):
            ub = u[i : i + batch].T.contiguous()  # (T, b)
            x = torch.tanh(b + w_in * ub[0:1]).mul_(a)  # (N, b)
            for t in range(1, ub.shape[0]):
                pre = torch.sparse.mm(w, x).add_(b).add_(w_in * ub[t : t + 1])
                x = x.mul_(1.0 - a).add_(torch.tanh_(pre).mul_(a))
            out.append(x.T.contiguous())
        return torch.cat(out)

    @torch.no_grad()
    def predict(self, windows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Same numbers as forward (up to float rounding), through the sparse state path: for big batches."""
        u = self.encode(torch.as_tensor(windows, dtype=torch.float32))
        return self.readout(u[:, -1:], self.final_states(u))

    def features(self, windows: np.ndarray, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Readout features [1; u_T; x_T] (B, N + 2) float64 and u (B, T) float64 of raw windows (B, T); computed
        in float32 as served, or in float64 throughout (`exact`, for the float32 error of a readout)."""
        model = copy.deepcopy(self).double() if exact else self
        with torch.no_grad():
            u = model.encode(torch.as_tensor(windows, dtype=torch.float64 if exact else torch.float32))
            x = model.final_states(u)
        feats = np.concatenate([np.ones((len(u), 1)), u[:, -1:].numpy(), x.numpy()], axis=1)
        return feats.astype(np.float64), u.numpy().astype(np.float64)

    def targets(self, u_last: np.ndarray, future: np.ndarray) -> np.ndarray:
        """Readout targets (B, H) for raw future values (B, H): u_{t+h} - u_t ("identity": u_{t+h})."""
        f = future.astype(np.float64)
        if self.cfg.transform == "identity":
            return (f - float(self.in_loc)) / float(self.in_scale)
        u_future = (np.log(np.maximum(f, EPS)) - float(self.in_loc)) / float(self.in_scale)
        return u_future - u_last[:, None]

    def predict_from_features(self, feats: np.ndarray, w_out: np.ndarray) -> np.ndarray:
        r = feats @ w_out.T
        if self.cfg.transform == "identity":
            return float(self.in_loc) + float(self.in_scale) * r
        return np.exp(float(self.in_loc) + float(self.in_scale) * (feats[:, 1:2] + r))

    def config_dict(self) -> dict:
        return asdict(self.cfg)


def ridge(feats: np.ndarray, targets: np.ndarray, lam: float, gram: np.ndarray | None = None) -> np.ndarray:
    """Closed-form ridge (S^T S + lam I)^-1 S^T Y, returned as (H, F)."""
    g = feats.T @ feats if gram is None else gram
    return np.linalg.solve(g + lam * np.eye(g.shape[0]), feats.T @ targets).T


class ReservoirStream(nn.Module):
    """forward(tick (B, 1), state (B, N)) -> (forecast (B, H), new_state (B, N)); start from state = 0. The state
    is what Reservoir.stream_state returns: s = x / a with the fused graph, so a tick is the window's step."""

    def __init__(self, reservoir: Reservoir):
        super().__init__()
        self.core = reservoir

    def forward(self, tick: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        core = self.core
        u = core.encode(tick)  # (B, 1)
        if core.cfg.graph == "fused":  # the window's arithmetic, one step: the stream equals the window
            (p,) = core.projections(u)
            s = core.fused_step(p, state.reshape(-1, core.cfg.units // core.cfg.blocks)).reshape(-1, core.cfg.units)
            return core.readout(u, core.unscaled(s)), s
        x = core.step(u, state)  # (B, N)
        return core.readout(u, x), x


@torch.no_grad()
def sparse(w: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return w.to_sparse_csr()


@torch.no_grad()
def mackey_glass_nrmse(
    model: Reservoir, series: np.ndarray, washout: int = 200, n_train: int = 2000, lam: float = 1e-8
) -> float:
    """One-step-ahead NRMSE on Mackey-Glass with the model's own W, W_in, b (readout refitted, continuous run)."""
    s = series.astype(np.float64)
    mu, sd = s[: washout + n_train].mean(), s[: washout + n_train].std()
    u = torch.as_tensor((s - mu) / sd, dtype=torch.float32)
    x = torch.zeros(1, model.cfg.units)
    states = np.empty((len(s) - 1, model.cfg.units + 2))
    for t in range(len(s) - 1):
        x = model.step(u[t].reshape(1, 1), x)
        states[t, 0], states[t, 1], states[t, 2:] = 1.0, float(u[t]), x[0].numpy()
    target = u[1:].numpy().astype(np.float64)[:, None]
    tr = slice(washout, washout + n_train)
    te = slice(washout + n_train, len(s) - 1)
    w_out = ridge(states[tr], target[tr], lam)
    pred = states[te] @ w_out.T
    return float(np.sqrt(np.mean((pred - target[te]) ** 2)) / target[te].std())
