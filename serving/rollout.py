"""Roll a new version of one model out to a running Triton, without downtime.

    python -m serving.rollout --model nhits --from build/next/model_repository \
        [--repo model_repository] [--url 127.0.0.1:8001] [--admin-key-file build/triton-run/admin.key]
        [--canary rows.npz] [--report rollout.json]

The server must run in explicit model-control mode (`python -m serving.server --model-control explicit`)
over `--repo`; the model-control API is restricted, so the admin key is needed (the launcher's key file by
default). `--from` is what an export or an import wrote: a model repository holding `<model>/`, or the
model folder itself; its highest version folder is rolled out. Steps, each of which stops the rollout on
failure, undoes what was done and exits 1 naming the step:

1. served: the loaded version N of the model and its running config, from the server. Ensembles (no
   files), stateful models (sequence batching: a new instance would drop every open sequence) and version
   policies other than `latest 1` (Triton's default) are refused.
2. export: it holds the file the running config serves and every artifact matches its recorded SHA-256;
   its tensors are the served ones (a new signature is a new model: import it under a new name).
3. write: version N+1 goes into `<repo>/<model>/N+1/` (built in a stage beside the repository, hashes
   verified, one rename) and its hashes into `<repo>/integrity.json`.
4. canary: N+1's served file is loaded as `<model>__canary` (the model-control API, with config and file
   in the request), so no client request reaches it; the canary set (`--canary`, else rows drawn from the
   served signature: price-like walks, ids of N's valid range) goes through the server to it and must equal
   ONNX Runtime in this process on the same file (relative error <= 1e-4, ids equal except at score ties),
   and N+1 must answer every row that N answers (no sentinel where N has a value).
5. swap: the model is loaded again; Triton loads N+1 beside N, moves requests to it when it is ready and
   then lets N go (latest 1), so no request fails. The model is then checked again through its own name.
6. on failure: the canary is unloaded, N+1 leaves the repository and integrity.json, and N, never
   unloaded, keeps serving (after a failed check at 5 the model is loaded again from N).

After a rollout the repository holds versions N and N+1 (N for a later rollback); older ones are removed.
A catalog refresh is the same command for `similarity` (and `user_embedding`) from an export of the new
catalog: `make export CATALOG=new_items.npy REPO=build/next` then `make rollout MODEL=similarity FROM=build/next`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.files import sha256_file
from common.ort import ort_session
from common.triton import admin_headers
from repository import integrity, publish
from serving.answers import check
from serving.server import DEFAULT_RUN_DIR

log = logging.getLogger("serving.rollout")

PROG = "serving.rollout"
CANARY_SUFFIX = "__canary"
CANARY_ROWS = 64
CANARY_BATCHES = (1, 7, 16, 40)  # request sizes the canary rows are sent in (batch 1 and dynamic batches)
CANARY_RTOL = 1e-4  # the export's FP32 bound: same file, same ONNX Runtime, only the batch differs
SEED = 20261202
LOAD_TIMEOUT_S = 300.0


class RolloutError(RuntimeError):
    """One line: which step failed and why (the repository and the server are as they were)."""


@dataclass
class Served:
    model: str
    version: int
    config: Any  # model_config_pb2.ModelConfig as the server runs it
    filename: str  # the file the running config serves

    def path(self, repo: Path, version: int | None = None) -> Path:
        return repo / self.model / str(self.version if version is None else version) / self.filename


@dataclass
class Outcome:
    model: str
    from_version: int
    to_version: int | None = None
    steps: dict[str, Any] = field(default_factory=dict)
    ok: bool = False
    error: str = ""


# ----------------------------------------------------------------------------- server


class Control:
    """gRPC client with the admin key: model control, metadata, inference."""

    def __init__(self, url: str, key: str):
        import tritonclient.grpc as grpcclient

        self.mod = grpcclient
        self.client = grpcclient.InferenceServerClient(url)
        self.headers = admin_headers(key, "grpc")

    def versions(self, model: str) -> list[int]:
        """Loaded (READY) versions of `model`."""
        index = self.client.get_model_repository_index(headers=self.headers, as_json=True)
        return sorted(
            int(m["version"])
            for m in index.get("models", [])
            if m.get("name") == model and m.get("state") == "READY" and m.get("version", "").isdigit()
        )

    def config(self, model: str) -> Any:
        return self.client.get_model_config(model, headers=self.headers).config

    def load(self, model: str, config: Any = None, files: dict[str, bytes] | None = None) -> None:
        from google.protobuf import json_format

        text = json_format.MessageToJson(config, preserving_proto_field_name=True) if config is not None else None
        self.client.load_model(model, headers=self.headers, config=text, files=files, client_timeout=LOAD_TIMEOUT_S)

    def unload(self, model: str) -> None:
        self.client.unload_model(model, headers=self.headers, unload_dependents=False)

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str], version: str = "") -> dict:
        from tritonclient.utils import np_to_triton_dtype

        tensors = []
        for name, a in inputs.items():
            t = self.mod.InferInput(name, list(a.shape), np_to_triton_dtype(a.dtype))
            t.set_data_from_numpy(np.ascontiguousarray(a))
            tensors.append(t)
        wanted = [self.mod.InferRequestedOutput(n) for n in outputs]
        r = self.client.infer(model, tensors, model_version=version, outputs=wanted, client_timeout=60)
        return {n: r.as_numpy(n) for n in outputs}

    def close(self) -> None:
        self.client.close()


def canary_ready(control: Control, model: str) -> bool:
    """Is `<model>__canary` loaded and ready? (It is loaded from the request, so the repository index omits it.)"""
    try:
        return bool(control.client.is_model_ready(model + CANARY_SUFFIX))
    except Exception:  # noqa: BLE001 - tritonclient raises for a model the server does not know
        return False


def _message(exc: BaseException) -> str:
    text = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    return " ".join(str(text).split())


def served(control: Control, model: str) -> Served:
    """Step 1: the loaded version and the running config; RolloutError for what a rollout cannot replace."""
    versions = control.versions(model)
    if not versions:
        raise RolloutError(f"{model} is not loaded on the server: nothing to roll out over (load it first)")
    config = control.config(model)
    if config.platform == "ensemble":
        raise RolloutError(f"{model} is an ensemble: it has no files; roll out the models of its steps")
    if config.HasField("sequence_batching"):
        raise RolloutError(
            f"{model} keeps per-sequence state in its loaded instance: a new version would drop every open "
            "sequence; drain its streams and restart the server over the new version instead"
        )
    policy = config.version_policy
    if policy.WhichOneof("policy_choice") not in (None, "latest") or (
        policy.HasField("latest") and policy.latest.num_versions != 1
    ):
        raise RolloutError(
            f"{model} has version_policy {str(policy).strip() or '?'}: a rollout moves from one version to the "
            "next under `latest 1` (Triton's default)"
        )
    from models import spec

    return Served(model, versions[-1], config, config.default_model_filename or spec.ONNX_FP32)


# ----------------------------------------------------------------------------- export


def export_version(source: Path, model: str) -> Path:
    """The version folder to roll out: the highest numeric one of `source/<model>/` or of `source/`."""
    folder = source / model if (source / model).is_dir() else source
    versions = (
        sorted((int(p.name), p) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()) if folder.is_dir() else []
    )
    if not versions:
        raise RolloutError(f"{source}: no version folder of {model} (expected {source}/{model}/<n>/)")
    return versions[-1][1]


def onnx_signature(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except (DecodeError, OSError, ValueError) as exc:
        raise RolloutError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    out = {}
    for vi in (*graph.input, *graph.output):
        tt = vi.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        out[vi.name] = (dtype, tuple(d.dim_value for d in tt.shape.dim[1:]))
    return out


def config_signature(config: Any) -> dict[str, tuple[str, tuple[int, ...]]]:
    from common.triton import DTYPES

    return {t.name: (DTYPES.get(t.data_type, str(t.data_type)), tuple(t.dims)) for t in (*config.input, *config.output)}


def check_export(version_dir: Path, current: Served) -> list[Path]:
    """Step 2: the artifacts to copy; RolloutError naming what is missing, unrecorded or different."""
    artifacts = sorted(
        f for f in version_dir.rglob("*") if f.is_file() and f.name.endswith(integrity.ARTIFACT_SUFFIXES)
    )
    if not any(f.name == current.filename for f in artifacts):
        raise RolloutError(f"{version_dir}: no {current.filename}, the file {current.model}'s running config serves")
    for f in artifacts:
        record = integrity.record_path(f)
        want = None
        if record.is_file():
            key = integrity.PLAN_RECORD_KEY if f.name.endswith(".plan") else integrity.RECORD_KEY
            want = json.loads(record.read_text()).get(key)
        if not want:
            raise RolloutError(f"{f}: no recorded hash ({record.name}): roll out only what an export verified")
        if sha256_file(f) != want:
            raise RolloutError(f"{f}: sha256 differs from {record.name}: the export was modified after it was made")
    want = config_signature(current.config)
    for f in artifacts:
        if f.suffix != ".onnx":
            continue
        got = {k: v for k, v in onnx_signature(f).items() if k in want or k not in ("START", "END", "CORRID")}
        if got != want:
            raise RolloutError(
                f"{f}: tensors {got} differ from the served {want}: a new signature is a new model "
                "(import it under a new name)"
            )
    return artifacts


# ----------------------------------------------------------------------------- canary


def valid_ranges(path: Path) -> dict[str, tuple[int, int]]:
    """The id ranges a file's value guard enforces (export.onnx_export writes `valid_range.<input>`)."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return {
        k.removeprefix("valid_range."): tuple(int(x) for x in v.split(","))
        for k, v in props.items()
        if k.startswith("valid_range.")
    }


def canary_inputs(
    config: Any, ranges: dict[str, tuple[int, int]], rows: int, seed: int = SEED
) -> dict[str, np.ndarray]:
    """Rows in the served signature: float inputs a positive random walk around 100 (prices, forecasts; a
    query is normalised in the graph), integer inputs uniform over the range version N serves."""
    from common.triton import DTYPES

    rng = np.random.default_rng(seed)
    out = {}
    for t in config.input:
        shape = (rows, *t.dims)
        dtype = DTYPES.get(t.data_type)
        if dtype == "float32":
            walk = 100.0 + rng.standard_normal(shape).reshape(rows, -1).cumsum(axis=1)
            out[t.name] = np.abs(walk).reshape(shape).astype(np.float32) + 1.0
        elif dtype in ("int64", "int32"):
            lo, hi = ranges.get(t.name, (0, 100))
            out[t.name] = rng.integers(lo, hi, size=shape).astype(dtype)
        else:
            raise RolloutError(f"input {t.name}: no canary rows for {dtype}; pass --canary rows.npz")
    return out


def read_canary(path: Path, config: Any) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    names = [t.name for t in config.input]
    if sorted(arrays) != sorted(names):
        raise RolloutError(f"{path}: arrays {sorted(arrays)} are not the inputs {names}")
    return {n: arrays[n] for n in names}


def ort_answers(path: Path, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    sess = ort_session(path)
    return dict(zip(outputs, sess.run(outputs, inputs), strict=True))


def _sentinel_rows(answers: dict[str, np.ndarray]) -> np.ndarray:
    """(rows,) bool: the rows answered with the value guard's sentinel (NaN in a float output, -1 in an id)."""
    rows = None
    for a in answers.values():
        flat = a.reshape(len(a), -1)
        bad = np.isnan(flat).any(axis=1) if a.dtype.kind == "f" else (flat == -1).any(axis=1)
        rows = bad if rows is None else rows | bad
    return rows


def _chunks(rows: int) -> Iterator[slice]:
    start = 0
    sizes = list(CANARY_BATCHES)
    while start < rows:
        size = sizes.pop(0) if sizes else CANARY_BATCHES[-1]
        yield slice(start, min(rows, start + size))
        start += size


def canary_check(
    control: Control, name: str, inputs: dict[str, np.ndarray], want: dict[str, np.ndarray], before: dict, version=""
) -> dict[str, Any]:
    """Send the canary rows to `name` in CANARY_BATCHES and compare with `want` (ONNX Runtime on the new file);
    `before` is version N's answer for the same rows. RolloutError on the first difference."""
    outputs = list(want)
    got: dict[str, list[np.ndarray]] = {n: [] for n in outputs}
    for part in _chunks(len(next(iter(inputs.values())))):
        try:
            answer = control.infer(name, {k: v[part] for k, v in inputs.items()}, outputs, version)
        except Exception as exc:  # noqa: BLE001 - tritonclient raises InferenceServerException; report it
            raise RolloutError(f"canary request to {name} failed: {_message(exc)}") from None
        for n in outputs:
            got[n].append(answer[n])
    served_answers = {n: np.concatenate(v) for n, v in got.items()}
    new_sentinels = _sentinel_rows(served_answers) & ~_sentinel_rows(before)
    if new_sentinels.any():
        first = int(np.argmax(new_sentinels))
        example = {k: v[first].reshape(-1)[:3].tolist() for k, v in inputs.items()}
        raise RolloutError(
            f"{name} answers the sentinel (a refused value) for {int(new_sentinels.sum())} of {len(new_sentinels)} "
            f"canary rows that the served version answers, e.g. row {first} {example}"
        )
    problem = check(name, served_answers, want, rtol=CANARY_RTOL)
    if problem:
        raise RolloutError(f"{name} through the server differs from ONNX Runtime on the same file: {problem}")
    errs = [
        float(np.max(np.abs(served_answers[n].astype(np.float64) - w)) / max(float(np.max(np.abs(w))), 1e-6))
        for n, w in want.items()
        if w.dtype.kind == "f" and w.size and np.isfinite(w).all()
    ]
    return {"rows": len(new_sentinels), "max_rel_err": max(errs, default=0.0)}


# ----------------------------------------------------------------------------- repository


def stage_version(stage: publish.Staging, model: str, version: int, files: list[Path], source: Path) -> Path:
    """Step 3: `<stage>/<model>/<version>/` with the export's artifacts and their records, verified. Nothing in
    the repository changes: the canary runs on these bytes, and only a version that passed it moves in."""
    dest = stage.repo / model / str(version)
    for f in files:
        for src in (f, integrity.record_path(f)):
            out = dest / src.relative_to(source)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out)
    problems = publish.verify(stage.repo, [model])
    if problems:
        raise RolloutError(f"the staged version {version} does not verify: {problems[0]}")
    return dest


def move_in(stage: publish.Staging, repo: Path, model: str, version: int) -> Path:
    """Step 5a: the checked version into the repository (one rename) with its hashes, marked pending in the stage
    until the swap confirms it: a rollout killed from here on leaves a marker that the next writer or server start
    acts on (repository.publish.recover takes the version out again)."""
    target = repo / model / str(version)
    if target.exists():
        raise RolloutError(f"{target} exists but is not loaded: remove it (a failed rollout by hand?) and retry")
    publish.write_durably(
        stage.repo / publish.PENDING, json.dumps({"model": model, "version": version, "pid": os.getpid()}) + "\n"
    )
    (stage.repo / model / str(version)).rename(target)  # a new name: one rename, nothing half written
    publish.fsync_dir(target.parent)
    publish.merge_manifest(repo, [model], had_manifest=(repo / integrity.MANIFEST).is_file())
    return target


def confirm(stage: publish.Staging) -> None:
    """The swap is confirmed: the version stays (the stage and its pending marker go)."""
    (stage.repo / publish.PENDING).unlink(missing_ok=True)


def remove_version(repo: Path, model: str, version: int) -> None:
    target = repo / model / str(version)
    if target.is_dir():
        trash = publish.stage_path(repo, f"trash-{model}-{version}")
        shutil.rmtree(trash, ignore_errors=True)
        target.rename(trash)  # out of the repository in one rename, then deleted
        publish.fsync_dir(target.parent)
        shutil.rmtree(trash, ignore_errors=True)
    publish.merge_manifest(repo, [model], had_manifest=(repo / integrity.MANIFEST).is_file())


# ----------------------------------------------------------------------------- the rollout


def rollout(
    control: Control, repo: Path, model: str, source: Path, canary: Path | None = None, rows: int = CANARY_ROWS
) -> Outcome:
    repo = Path(repo)
    current = served(control, model)
    canary_name = model + CANARY_SUFFIX
    try:  # a probe: refused unless the server is in explicit mode; also drops a canary left by a killed rollout
        control.unload(canary_name)
    except Exception as exc:  # noqa: BLE001
        if "not allowed" in _message(exc):
            raise RolloutError(
                "the server does not accept model control: start it in explicit mode "
                "(`python -m serving.server --model-control explicit`)"
            ) from None
    out = Outcome(model, current.version)
    if not current.path(repo).is_file():
        raise RolloutError(f"{current.path(repo)} is missing: --repo is not the repository the server serves")
    version_dir = export_version(Path(source), model)
    files = check_export(version_dir, current)
    out.steps["export"] = {"from": str(version_dir), "files": [f.name for f in files]}
    new = max([current.version, *(int(p.name) for p in (repo / model).iterdir() if p.name.isdigit())]) + 1
    out.to_version = new
    outputs = [t.name for t in current.config.output]
    inputs = (
        read_canary(canary, current.config)
        if canary is not None
        else canary_inputs(current.config, valid_ranges(current.path(repo)), rows)
    )
    before = ort_answers(current.path(repo), inputs, outputs)

    with publish.Staging(repo) as stage:  # holds the writer lock until the rollout is done or undone
        t0 = time.monotonic()
        staged = stage_version(stage, model, new, files, version_dir)
        out.steps["stage"] = {"version_dir": str(staged), "seconds": round(time.monotonic() - t0, 2)}
        loaded_canary = False
        moved = False
        swapped = False
        try:
            try:
                want = ort_answers(staged / current.filename, inputs, outputs)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
                raise RolloutError(f"ONNX Runtime cannot run version {new} here: {_message(exc)}") from None
            config = type(current.config)()
            config.CopyFrom(current.config)
            config.name = canary_name
            for group in config.instance_group:
                group.name = ""
            t1 = time.monotonic()
            try:
                control.load(
                    canary_name, config, {f"file:1/{current.filename}": (staged / current.filename).read_bytes()}
                )
            except Exception as exc:  # noqa: BLE001
                raise RolloutError(f"version {new} does not load: {_message(exc)}") from None
            loaded_canary = True
            out.steps["canary"] = {
                "load_s": round(time.monotonic() - t1, 2),
                **canary_check(control, canary_name, inputs, want, before),
            }
            control.unload(canary_name)
            loaded_canary = False

            target = move_in(stage, repo, model, new)  # only a version that passed its canary
            moved = True
            out.steps["write"] = {"version_dir": str(target)}
            t2 = time.monotonic()
            try:
                control.load(model)  # Triton: N+1 loads beside N, requests move when it is ready, then N goes
            except Exception as exc:  # noqa: BLE001
                raise RolloutError(f"loading {model} version {new} failed: {_message(exc)}") from None
            swapped = True
            now = control.versions(model)
            if now != [new]:
                raise RolloutError(f"after the load {model} serves versions {now}, not [{new}]")
            out.steps["swap"] = {
                "seconds": round(time.monotonic() - t2, 2),
                **canary_check(control, model, inputs, want, before, str(new)),
            }
            confirm(stage)
        except BaseException as exc:  # a failed check, a server error, Ctrl-C: undo, then report it
            out.error = str(exc)
            if loaded_canary:
                _quietly(control.unload, canary_name)
            if moved:
                remove_version(repo, model, new)
                confirm(stage)
            if swapped:
                _quietly(control.load, model)  # back to N, the highest version on disk again
            raise
    prune(repo, model, current.version)
    out.steps["ensembles"] = refresh_cached_ensembles(control, repo, model)
    out.ok = True
    return out


def prune(repo: Path, model: str, keep_from: int) -> None:
    """Remove the versions of `model` below `keep_from` (N stays, for a rollback by hand)."""
    for p in (repo / model).iterdir():
        if p.is_dir() and p.name.isdigit() and int(p.name) < keep_from:
            remove_version(repo, model, int(p.name))


def users_of(repo: Path, model: str) -> list[str]:
    """Ensembles that call `model`, directly or through another ensemble."""
    from serving.server import ensemble_steps

    steps = ensemble_steps(repo)
    found: list[str] = []
    frontier = {model}
    while frontier:
        frontier = {e for e, s in steps.items() if set(s) & frontier and e not in found}
        found += sorted(frontier)
    return found


def refresh_cached_ensembles(control: Control, repo: Path, model: str) -> dict[str, Any]:
    """Move each loaded ensemble that calls `model` and caches responses to a new (empty) version folder.

    Triton keys a cached response by model name, *version* and inputs: an ensemble keeps its version when a
    step is replaced, so its cache would go on answering with version N's results (seen: recommend after a
    catalog refresh). A new ensemble version starts with no cached answer; it loads beside the old one and
    takes the requests when ready, as any version does."""
    done: dict[str, Any] = {}
    for ensemble in users_of(repo, model):
        loaded = control.versions(ensemble)
        if not loaded or not control.config(ensemble).response_cache.enable:
            continue
        on_disk = [int(p.name) for p in (repo / ensemble).iterdir() if p.is_dir() and p.name.isdigit()]
        version = max([*loaded, *on_disk]) + 1
        (repo / ensemble / str(version)).mkdir()  # an ensemble version holds no file
        try:
            control.load(ensemble)
        except Exception as exc:  # noqa: BLE001
            (repo / ensemble / str(version)).rmdir()
            raise RolloutError(
                f"{model} is rolled out, but {ensemble} (response cache) did not move to version {version}: "
                f"{_message(exc)}; its cached answers may be version N's until evicted"
            ) from None
        prune(repo, ensemble, loaded[-1])
        done[ensemble] = {"from_version": loaded[-1], "to_version": version, "why": "response cache keyed by version"}
    return done


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - undoing after a failure: log, and keep undoing
        log.error("while undoing: %s(%s) failed: %s", fn.__name__, ", ".join(map(str, args)), _message(exc))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the served model to replace")
    p.add_argument("--from", dest="source", type=Path, required=True, help="export: a repository or model folder")
    p.add_argument("--repo", type=Path, default=Path("model_repository"), help="the repository the server serves")
    p.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC address (default %(default)s)")
    p.add_argument("--admin-key-file", type=Path, default=DEFAULT_RUN_DIR / "admin.key", help="admin key")
    p.add_argument("--canary", type=Path, help="canary rows (.npz, one array per input); default: drawn")
    p.add_argument("--canary-rows", type=int, default=CANARY_ROWS, help="drawn canary rows (%(default)s)")
    p.add_argument("--report", type=Path, help="write the outcome as JSON here")
    args = p.parse_args(argv)
    for path, what in ((args.repo, "model repository"), (args.source, "--from")):
        if not path.is_dir():
            p.error(f"{what} {path} is not a directory")
    if args.canary is not None and not args.canary.is_file():
        p.error(f"canary file {args.canary} does not exist")
    if args.canary_rows < 1:
        p.error("--canary-rows must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse(argv)
    key = os.environ.get("TRITON_ADMIN_KEY", "")
    if not key:
        if not args.admin_key_file.is_file():
            print(f"{PROG}: error: no admin key: set TRITON_ADMIN_KEY or pass --admin-key-file", file=sys.stderr)
            return 1
        key = args.admin_key_file.read_text().strip()
    control = Control(args.url, key)
    try:
        with publish.writer_lock(args.repo):  # one writer of the repository at a time (repository.publish)
            outcome = rollout(control, args.repo, args.model, args.source, args.canary, args.canary_rows)
    except RolloutError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - e.g. the server is not reachable: one line, not a traceback
        print(f"{PROG}: error: {type(exc).__name__}: {_message(exc)}", file=sys.stderr)
        return 1
    finally:
        control.close()
    if args.report:
        args.report.write_text(json.dumps(outcome.__dict__, indent=2, default=str) + "\n")
    c, s = outcome.steps["canary"], outcome.steps["swap"]
    print(
        f"{args.model}: version {outcome.from_version} -> {outcome.to_version}; canary {c['rows']} rows, "
        f"max rel err {c['max_rel_err']:.2g} vs ONNX Runtime; swap {s['seconds']} s, checked again "
        f"({s['max_rel_err']:.2g}); version {outcome.from_version} unloaded, kept in {args.repo / args.model}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
