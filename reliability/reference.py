"""What every served model and ensemble must answer: ONNX Runtime in this process, on the same files.

A `Workload` holds a pool of real requests per target (test-split inputs from `models.registry`) with the
answers ONNX Runtime gives here, computed once before any load so that checking a response costs a
comparison, not an inference. Ensembles are composed by hand from their steps (`forecast` = nhits and
reservoir then forecast_blend; `recommend` = user_embedding then similarity), and `reservoir_stream`
sequences are replayed tick by tick with the state carried locally.

    check(target, got, expected) -> None | "what is wrong"
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models import spec
from repository.layout import served_file
from serving.answers import RTOL, RTOL_BY_TARGET, check, max_rel_err  # noqa: F401 - the checks, re-exported

log = logging.getLogger(__name__)

STREAM = spec.STREAM.name
# search (text -> tokenizer (python backend) -> text_encoder -> similarity) where the repository serves it
TARGETS = (*spec.EXPORTED, "forecast", "recommend", "search", STREAM)


@dataclass
class Case:
    """One request: inputs (batch first) and the outputs the server must return."""

    target: str
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    # other answers that are right as well (a rollout: version N's answer is `expected`, N+1's is here)
    also: tuple[dict[str, np.ndarray], ...] = ()

    @property
    def batch(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


@dataclass
class Sequence:
    """A reservoir_stream sequence: ticks (L, 1, 1) and the forecast after each tick (L, 1, HORIZON)."""

    ticks: np.ndarray
    expected: np.ndarray


@dataclass
class Workload:
    cases: dict[str, list[Case]] = field(default_factory=dict)
    sequences: list[Sequence] = field(default_factory=list)

    @property
    def targets(self) -> list[str]:
        return [t for t in TARGETS if self.cases.get(t) or (t == STREAM and self.sequences)]


class Reference:
    """ONNX Runtime sessions over the files the server loads (each config's default_model_filename)."""

    def __init__(self, repo: Path, models: tuple[str, ...] = (*spec.EXPORTED, STREAM), config_name: str = "cpu"):
        self.sessions: dict[str, ort.InferenceSession] = {}
        self.repo = Path(repo)
        self._tokenizer = None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        for m in models:
            path = served_file(repo, m, config_name)
            if path.is_file():
                self.sessions[m] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            else:
                log.warning("no %s: %s is left out of the reference", path, m)

    def run(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        s = self.sessions[model]
        names = [o.name for o in s.get_outputs()]
        return dict(zip(names, s.run(names, inputs), strict=True))

    def answer(self, target: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if target == "forecast":
            nhits = self.run("nhits", inputs)["forecast"]
            reservoir = self.run("reservoir", inputs)["forecast"]
            blend = self.run("forecast_blend", {"nhits_forecast": nhits, "reservoir_forecast": reservoir})
            return {"forecast": blend["forecast"], "nhits_forecast": nhits, "reservoir_forecast": reservoir}
        if target == "recommend":
            embedding = self.run("user_embedding", inputs)["embedding"]
            return self.run("similarity", {"query": embedding})
        if target in ("tokenizer", "search"):
            ids, mask = self.tokenize(inputs["text"])
            if target == "tokenizer":
                return {"input_ids": ids, "attention_mask": mask}
            embedding = self.run("text_encoder", {"input_ids": ids, "attention_mask": mask})["embedding"]
            return self.run("similarity", {"query": embedding})
        out = self.run(target, inputs)
        return {t.name: out[t.name] for t in spec.MODELS[target].outputs}

    def tokenize(self, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What the tokenizer model answers: the repository's tokenizer.json, padded to the request's longest."""
        from models import real_data

        if self._tokenizer is None:
            self._tokenizer = real_data.load_tokenizer(spec.version_dir("tokenizer", self.repo) / "tokenizer.json")
        return real_data.tokenize(self._tokenizer, [t.decode("utf-8") for t in texts.reshape(-1)])

    def valid_range(self, model: str, tensor: str) -> tuple[int, int] | None:
        """The id range the exporter wrote into the ONNX metadata (`valid_range.<input>` = "lo,hi")."""
        meta = self.sessions[model].get_modelmeta().custom_metadata_map
        value = meta.get(f"valid_range.{tensor}")
        return tuple(int(v) for v in value.split(",")) if value else None

    def sequence(self, ticks: np.ndarray) -> np.ndarray:
        s = self.sessions[STREAM]
        units = int(s.get_inputs()[[i.name for i in s.get_inputs()].index("state_in")].shape[-1])
        state = np.zeros((1, units), np.float32)
        out = []
        for tick in ticks:
            forecast, state = s.run(["forecast", "state_out"], {"tick": tick, "state_in": state})
            out.append(forecast)
        return np.stack(out)


def _pool(model: str, artifacts: Path, n: int) -> dict[str, np.ndarray]:
    from models import registry

    if model == "search":  # test-split texts, one UTF-8 text per row (B, 1)
        from models import data

        texts = data.load_texts(artifacts, "test")
        picked = [texts[i] for i in np.linspace(0, len(texts) - 1, min(n, len(texts))).astype(int)]
        return {"text": np.array([[t.encode("utf-8")] for t in picked], dtype=object)}
    tensors = registry.example_inputs(model, artifacts, "test", n)
    return {t.name: x.numpy() for t, x in zip(spec.MODELS[model].inputs, tensors, strict=True)}


def build_workload(
    repo: Path,
    artifacts: Path,
    n: int = 64,
    batches: tuple[int, ...] = (1, 1, 1, 2, 4, 8),
    n_sequences: int = 16,
    sequence_len: int = 12,
    seed: int = 0,
    targets: tuple[str, ...] = TARGETS,
    ref: Reference | None = None,
) -> Workload:
    """`n` requests per target with batch sizes drawn from `batches`, and `n_sequences` stream sequences."""
    ref = ref or Reference(repo)
    rng = np.random.default_rng(seed)
    pools = {}
    wl = Workload()
    for target in targets:
        if target == STREAM:
            continue
        needs = {
            "forecast": ("nhits", "reservoir", "forecast_blend"),
            "recommend": ("user_embedding", "similarity"),
            "search": ("text_encoder", "similarity"),
        }
        if not all(m in ref.sessions for m in needs.get(target, (target,))):
            continue
        if target == "search" and not (Path(repo) / "search" / "config.pbtxt").is_file():
            continue  # a repository whose catalog is not in the encoder's space serves no search
        source = {"forecast": "nhits", "recommend": "user_embedding"}.get(target, target)
        if source not in pools:
            pools[source] = _pool(source, artifacts, max(n, 8))
        pool = pools[source]
        rows = len(next(iter(pool.values())))
        cases = []
        for _ in range(n):
            b = int(rng.choice(batches))
            idx = rng.choice(rows, size=b, replace=False)
            inputs = {k: np.ascontiguousarray(v[idx]) for k, v in pool.items()}
            cases.append(Case(target, inputs, ref.answer(target, inputs)))
        wl.cases[target] = cases
    if STREAM in targets and STREAM in ref.sessions and n_sequences:
        windows = pools.get("nhits") or _pool("nhits", artifacts, max(n_sequences, 8))
        series = windows["window"]
        for i in range(n_sequences):
            start = int(rng.integers(0, series.shape[1] - sequence_len + 1))
            ticks = series[i % len(series), start : start + sequence_len].reshape(sequence_len, 1, 1)
            ticks = np.ascontiguousarray(ticks, dtype=np.float32)
            wl.sequences.append(Sequence(ticks, ref.sequence(ticks)))
    log.info("workload: %s requests, %d sequences", {t: len(c) for t, c in wl.cases.items()}, len(wl.sequences))
    return wl
