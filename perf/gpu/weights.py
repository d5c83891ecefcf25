"""Models, inputs and PyTorch execution shared by the GPU probe, the torch_py backend and the serving checks.

Timing depends on shapes, not on trained values, so where no checkpoint is at hand (the full ones cannot
travel with a device call) same-shape stand-ins are built: similarity and user_embedding from the real
catalog and user table (`models.data.make_embeddings`, full sizes, seed 0: what `make export` trains on),
the reservoir from its real W, W_in, b with a random readout, nhits and forecast_blend with seeded random
weights. Inputs come from the project's test-split generators. Every result says where its weights came from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import data, registry, spec
from models.blend import Blend
from models.nhits import NHITS
from models.reservoir import Reservoir, ReservoirConfig
from models.similarity import Similarity, UserEmbedding
from perf.gpu.repository import BASE, ENSEMBLES

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic (same architecture and shapes, untrained)"


class Forecast(nn.Module):
    """The `forecast` ensemble in one process: nhits and reservoir, then forecast_blend."""

    def __init__(self, nhits: nn.Module, reservoir: nn.Module, blend: nn.Module):
        super().__init__()
        self.nhits, self.reservoir, self.blend = nhits, reservoir, blend

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return self.blend(self.nhits(window), self.reservoir(window))


class Recommend(nn.Module):
    """The `recommend` ensemble in one process: user_embedding, then similarity."""

    def __init__(self, users: nn.Module, similarity: nn.Module):
        super().__init__()
        self.users, self.similarity = users, similarity

    def forward(self, user_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.similarity(self.users(user_id))


def synthetic_model(name: str, n_items: int, n_users: int, units: int = spec.RESERVOIR_UNITS, seed: int = 0):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if name == "nhits":
        return NHITS().eval()
    if name == "reservoir":
        block = ReservoirConfig.block_size if units % ReservoirConfig.block_size == 0 else units  # one block if need be
        res = Reservoir(ReservoirConfig(units=units, seed=seed, block_size=block))
        res.in_loc.fill_(4.5)  # log of a typical price level of the generated series
        res.in_scale.fill_(1.0)
        res.set_readout(rng.normal(0.0, 0.01, (spec.HORIZON, units + 2)).astype(np.float32))
        return res.eval()
    if name == "forecast_blend":
        return Blend(rng.uniform(0.0, 1.0, spec.HORIZON).astype(np.float32)).eval()
    if name in ("similarity", "user_embedding"):
        catalog, users = data.make_embeddings(n_items, n_users if name == "user_embedding" else 1, seed=seed)
        return (Similarity(catalog, k=spec.TOP_K) if name == "similarity" else UserEmbedding(users)).eval()
    raise ValueError(f"unknown model {name!r}: expected one of {', '.join(BASE)}")


def load_all(
    artifacts: Path | None,
    models: tuple[str, ...],
    n_items: int = spec.N_ITEMS,
    n_users: int = spec.N_USERS,
    units: int = spec.RESERVOIR_UNITS,
    where: Callable[[str], Path] | None = None,
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Eval float32 modules for `models` (BASE names and the in-process ensembles `forecast` and `recommend`)
    and where their weights came from: `<artifacts>/checkpoints/`, or with `where` `<where(model)>/checkpoints/`
    (a model repository), else stand-ins."""
    need = set(models).union(*(ENSEMBLES.get(m, ()) for m in models))
    mods, sources = {}, {}
    for name in (n for n in BASE if n in need):
        folder = where(name) if where else artifacts
        path = registry.checkpoint_path(folder, name) if folder is not None else None
        if path is not None and path.is_file():
            mods[name], sources[name] = registry.load_model(name, folder), f"checkpoint {path}"
        else:
            mods[name], sources[name] = synthetic_model(name, n_items, n_users, units), SYNTHETIC
        log.info("%s: %s", name, sources[name])
    if "forecast" in need:
        mods["forecast"] = Forecast(mods["nhits"], mods["reservoir"], mods["forecast_blend"]).eval()
    if "recommend" in need:
        mods["recommend"] = Recommend(mods["user_embedding"], mods["similarity"]).eval()
    return {n: mods[n] for n in models}, sources


def synthesize_checkpoint(folder: Path, name: str, n_items: int, n_users: int) -> str:
    """A registry-format stand-in checkpoint under `folder` unless one is there; where its weights came from."""
    path = registry.checkpoint_path(folder, name)
    if path.is_file():
        return f"checkpoint {path}"
    module = synthetic_model(name, n_items, n_users)
    configs = {
        "forecast_blend": {"horizon": spec.HORIZON},
        "similarity": {"n_items": n_items, "dim": spec.EMBED_DIM, "k": spec.TOP_K},
        "user_embedding": {"n_users": n_users, "dim": spec.EMBED_DIM},
    }
    registry.save_checkpoint(folder, name, configs[name] if name in configs else module.config_dict(), module)
    return SYNTHETIC


# ---------------------------------------------------------------------------------- inputs

_CACHE: dict[str, np.ndarray] = {}


def _windows() -> np.ndarray:
    if "windows" not in _CACHE:
        cfg = data.SeriesConfig()
        test = data.split_series(data.make_series(cfg), cfg)["test"]
        _CACHE["windows"] = data.windows_from_series(test, stride=6)[0]  # (N, INPUT_SIZE), positive
    return _CACHE["windows"]


def inputs(name: str, batch: int, n_sets: int, n_users: int, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """`n_sets` different input tuples of `batch` rows for model `name` (numpy, CPU)."""
    rng = np.random.default_rng([seed, batch])
    if name == "similarity" and "users" not in _CACHE:  # user vectors around the catalog's cluster centres
        _CACHE["users"] = data.make_embeddings(2, 4096)[1]
    sets = []
    for _ in range(n_sets):
        if name in ("nhits", "reservoir", "forecast"):
            sets.append((np.ascontiguousarray(_windows()[rng.integers(0, len(_windows()), batch)]),))
        elif name == "forecast_blend":
            last = _windows()[rng.integers(0, len(_windows()), batch)][:, -1:]
            noise = rng.normal(0.0, 0.02, (2, batch, spec.HORIZON)).astype(np.float32)
            sets.append((last * (1 + noise[0]), last * (1 + noise[1])))
        elif name == "similarity":
            sets.append((data.queries_from_users(_CACHE["users"], "test", batch, seed=int(rng.integers(1 << 30)))[0],))
        elif name in ("user_embedding", "recommend"):
            sets.append((rng.integers(0, n_users, (batch, 1)).astype(np.int64),))
        else:
            raise ValueError(f"no inputs for model {name!r}")
    return sets


# ---------------------------------------------------------------------------------- execution


class Runner(nn.Module):
    """`module` with float inputs cast to `cast` (half weights) or run under autocast to `amp`; returns a tuple
    with float outputs as float32 (what Triton serves)."""

    def __init__(self, module: nn.Module, cast: torch.dtype | None, amp: torch.dtype | None, device_type: str):
        super().__init__()
        self.module, self.cast, self.amp, self.device_type = module, cast, amp, device_type

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.cast is not None:
            xs = tuple(x.to(self.cast) if x.is_floating_point() else x for x in xs)
        if self.amp is None:  # no autocast context at all: its entry and exit would be timed too
            out = self.module(*xs)
        else:
            with torch.autocast(self.device_type, dtype=self.amp, cache_enabled=False):
                out = self.module(*xs)
        out = out if isinstance(out, tuple) else (out,)
        return tuple(o.float() if o.is_floating_point() else o for o in out)


def capture(fn: Callable, static_in: Sequence[torch.Tensor], pool=None) -> tuple[torch.cuda.CUDAGraph, tuple]:
    """A CUDA graph of `fn(*static_in)` after three warm-up calls on a side stream, and its static outputs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn(*static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn(*static_in)
    return graph, out


def compare(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> tuple[float, float | None]:
    """(relative L2 error of the float outputs, share of the reference's integer ids found in the same row, or
    None when there are no ids) of outputs against a reference, output by output."""
    pairs = list(zip(got, want, strict=True))
    floats = [(np.asarray(g, np.float64), np.asarray(w, np.float64)) for g, w in pairs if w.dtype.kind == "f"]
    diff = np.concatenate([(g - w).ravel() for g, w in floats])
    norm = np.linalg.norm(np.concatenate([w.ravel() for _, w in floats]))
    rel = float(np.linalg.norm(diff) / max(float(norm), 1e-30))
    ids = [(g, w) for g, w in pairs if w.dtype.kind in "iu"]
    if not ids:
        return rel, None
    g, w = ids[0]
    return rel, float(sum(len(set(a) & set(b)) for a, b in zip(g.tolist(), w.tolist(), strict=True)) / w.size)
