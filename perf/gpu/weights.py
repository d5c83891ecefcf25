"""Models and inputs for GPU measurements: trained checkpoints where they exist, else same-shape stand-ins.

Timing depends on shapes, not on trained values, so a GPU machine that has no checkpoints (the
full ones are hundreds of MB and cannot travel with a device call) builds the models here:

- similarity / user_embedding: the real catalog and user table (`models.data.make_embeddings` with
  the full sizes and seed 0 is exactly what `make export` trains on);
- reservoir: the real W, W_in, b (drawn from the seed, never trained) with a random readout;
- nhits / forecast_blend: the architecture with seeded random weights.

Inputs always come from the project's own data generators (the test split), so no artifacts are
needed to get realistic windows, queries and user ids. Every result says where its weights came from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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


def synthetic_model(
    name: str,
    n_items: int = spec.N_ITEMS,
    n_users: int = spec.N_USERS,
    units: int = spec.RESERVOIR_UNITS,
    seed: int = 0,
) -> nn.Module:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if name == "nhits":
        return NHITS().eval()
    if name == "reservoir":
        res = Reservoir(ReservoirConfig(units=units, seed=seed))
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


def load_base(
    name: str,
    artifacts: Path | None,
    n_items: int = spec.N_ITEMS,
    n_users: int = spec.N_USERS,
    units: int = spec.RESERVOIR_UNITS,
) -> tuple[nn.Module, str]:
    """(eval float32 module, where its weights came from) for one of BASE."""
    if artifacts is not None and registry.checkpoint_path(artifacts, name).is_file():
        path = registry.checkpoint_path(artifacts, name)
        return registry.load_model(name, artifacts), f"checkpoint {path}"
    return synthetic_model(name, n_items, n_users, units), SYNTHETIC


def load_all(
    artifacts: Path | None,
    models: tuple[str, ...],
    n_items: int = spec.N_ITEMS,
    n_users: int = spec.N_USERS,
    units: int = spec.RESERVOIR_UNITS,
    where: Callable[[str], Path] | None = None,
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Modules for `models` (BASE names plus the in-process ensembles `forecast` and `recommend`), from
    `<artifacts>/checkpoints/` or, with `where`, from `<where(model)>/checkpoints/` (a model repository)."""
    need = set(models).union(*(ENSEMBLES.get(m, ()) for m in models))
    mods: dict[str, nn.Module] = {}
    sources: dict[str, str] = {}
    for name in (n for n in BASE if n in need):
        mods[name], sources[name] = load_base(name, where(name) if where else artifacts, n_items, n_users, units)
        log.info("%s: %s", name, sources[name])
    if "forecast" in need:
        mods["forecast"] = Forecast(mods["nhits"], mods["reservoir"], mods["forecast_blend"]).eval()
    if "recommend" in need:
        mods["recommend"] = Recommend(mods["user_embedding"], mods["similarity"]).eval()
    return {n: mods[n] for n in models}, sources


def synthesize_checkpoints(
    artifacts: Path, names: tuple[str, ...] = BASE, n_items: int = spec.N_ITEMS, n_users: int = spec.N_USERS
) -> dict[str, str]:
    """Write registry-format checkpoints for `names` that have none yet; returns where each came from."""
    sources = {}
    for name in names:
        path = registry.checkpoint_path(artifacts, name)
        if path.is_file():
            sources[name] = f"checkpoint {path}"
            continue
        module = synthetic_model(name, n_items, n_users)
        if name in ("nhits", "reservoir"):
            config = module.config_dict()
        elif name == "forecast_blend":
            config = {"horizon": spec.HORIZON}
        elif name == "similarity":
            config = {"n_items": n_items, "dim": spec.EMBED_DIM, "k": spec.TOP_K}
        else:
            config = {"n_users": n_users, "dim": spec.EMBED_DIM}
        registry.save_checkpoint(artifacts, name, config, module)
        sources[name] = SYNTHETIC
    return sources


# ---------------------------------------------------------------------------------- inputs

_CACHE: dict[str, np.ndarray] = {}


def _windows() -> np.ndarray:
    if "windows" not in _CACHE:
        cfg = data.SeriesConfig()
        test = data.split_series(data.make_series(cfg), cfg)["test"]
        _CACHE["windows"] = data.windows_from_series(test, stride=6)[0]  # (N, INPUT_SIZE), positive
    return _CACHE["windows"]


def _users(n: int) -> np.ndarray:
    """User vectors sharing the catalog's cluster centres (the centres are drawn first from the seed)."""
    if "users" not in _CACHE:
        _CACHE["users"] = data.make_embeddings(2, n)[1]
    return _CACHE["users"]


def inputs(name: str, batch: int, n_sets: int, n_users: int, seed: int = 0) -> list[tuple[np.ndarray]]:
    """`n_sets` different input tuples of `batch` rows for model `name` (numpy, CPU)."""
    rng = np.random.default_rng([seed, batch])
    sets = []
    for _ in range(n_sets):
        if name in ("nhits", "reservoir", "forecast"):
            w = _windows()
            sets.append((np.ascontiguousarray(w[rng.integers(0, len(w), batch)]),))
        elif name == "forecast_blend":
            w = _windows()[rng.integers(0, len(_windows()), batch)]
            last = w[:, -1:]
            noise = rng.normal(0.0, 0.02, (2, batch, spec.HORIZON)).astype(np.float32)
            sets.append((last * (1 + noise[0]), last * (1 + noise[1])))
        elif name == "similarity":
            q, _ = data.queries_from_users(_users(4096), "test", batch, seed=int(rng.integers(1 << 30)))
            sets.append((q,))
        elif name in ("user_embedding", "recommend"):
            sets.append((rng.integers(0, n_users, (batch, 1)).astype(np.int64),))
        else:
            raise ValueError(f"no inputs for model {name!r}")
    return sets
