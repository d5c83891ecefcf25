"""Artifact integrity: every served model file matches a recorded SHA-256 before the server starts.

    python -m repository.integrity --repo model_repository --write     # after export: record the hashes
    python -m repository.integrity --repo model_repository             # verify (exit 1 and name each bad file)
    python -m repository.integrity --repo model_repository --scan      # also look for leaked paths / secrets

What is covered: every file a model loads, i.e. every file of a model folder: its configs (`config.pbtxt`,
`configs/*.pbtxt`) and everything in its version folders (`*.onnx`, `*.plan`, a python model's `model.py`,
the tokenizer's `tokenizer.json`, the provenance records); `__pycache__` is left out (Python writes it).
Where the hashes come from:
- the repository manifest `<repo>/integrity.json` that `write_manifest` writes at the end of `make export`
  (`{"files": {"nhits/1/model.onnx": {"sha256": ..., "bytes": ...}, "nhits/config.pbtxt": ...}}`; Triton
  ignores files at the repository root), for every file, and
- the exporter's provenance record beside an artifact (`model.onnx.json`, key `onnx_sha256`).

Fail closed: an artifact (`*.onnx`, `*.plan`) with no recorded hash, a file of a repository that has a manifest
but is not listed in it, a hash that differs from either record, a file listed in the manifest but absent, each
is one problem naming the file. A repository without a manifest (a BYOM import into a fresh folder) has its
artifacts checked against their records only. `TritonServer.start` refuses to launch when
`verify_repository` returns any (see RELIABILITY.md for the wiring).

What this protects against: truncated or corrupted copies, a half-finished export, a file swapped
after export by mistake or by someone without write access to the manifest. It is not a signature:
whoever can rewrite the repository can rewrite the manifest too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "integrity.json"
RECORD_SUFFIX = ".json"  # model.onnx -> model.onnx.json (export.onnx_export, calibration.calibrate)
RECORD_KEY = "onnx_sha256"
# model.plan -> model.plan.provenance.json (export.build_engine)
PLAN_RECORD_SUFFIX = ".provenance.json"
PLAN_RECORD_KEY = "plan_sha256"
ARTIFACT_SUFFIXES = (".onnx", ".plan")
# Build-machine paths that must not travel inside an artifact (ONNX metadata, doc strings, records).
LEAK_PATTERN = re.compile(rb"(?<![A-Za-z0-9_.])/(?:work|root|home|tmp|Users|builds?)/[A-Za-z0-9_.\-]+")


def _sha256(path: Path) -> str:
    # common.files.sha256_file, inlined: the serving image runs this file alone, with the standard library only
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def model_dirs(repo: Path) -> list[Path]:
    """Folders of the repository that Triton treats as models (a config at the top or under configs/)."""
    return sorted(
        d
        for d in repo.iterdir()
        if d.is_dir() and not d.name.startswith(".") and ((d / "config.pbtxt").is_file() or (d / "configs").is_dir())
    )


def artifact_files(repo: Path) -> Iterator[Path]:
    """Every weight / engine file in a numeric version folder of a model."""
    for model in model_dirs(repo):
        for version in sorted(v for v in model.iterdir() if v.is_dir() and v.name.isdigit()):
            for f in sorted(version.rglob("*")):
                if f.is_file() and f.name.endswith(ARTIFACT_SUFFIXES):
                    yield f


def model_files(repo: Path) -> Iterator[Path]:
    """Every file a model of `repo` loads: its configs and everything in its version folders (no __pycache__)."""
    for model in model_dirs(repo):
        for f in sorted(model.rglob("*")):
            rel = f.relative_to(model).parts
            if not f.is_file() or "__pycache__" in rel or f.suffix == ".pyc":
                continue
            if rel[0].isdigit() and (model / rel[0]).is_dir() or rel[0] in ("config.pbtxt", "configs"):
                yield f


def _rel(repo: Path, path: Path) -> str:
    return path.relative_to(repo).as_posix()


def write_manifest(repo: Path) -> Path:
    """Record the SHA-256 and size of every file a model of `repo` loads in `<repo>/integrity.json`."""
    repo = Path(repo)
    files = {_rel(repo, f): {"sha256": _sha256(f), "bytes": f.stat().st_size} for f in model_files(repo)}
    path = repo / MANIFEST
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps({"algorithm": "sha256", "files": files}, indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    log.info("recorded %d file hashes in %s", len(files), path)
    return path


def read_manifest(repo: Path) -> dict[str, dict] | None:
    path = Path(repo) / MANIFEST
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("algorithm", "sha256") != "sha256" or not isinstance(data.get("files"), dict):
        raise ValueError(f"{path}: not an integrity manifest (expected algorithm sha256 and a files map)")
    return data["files"]


def record_path(artifact: Path) -> Path:
    """The provenance record the exporter writes beside `artifact`."""
    suffix = PLAN_RECORD_SUFFIX if artifact.name.endswith(".plan") else RECORD_SUFFIX
    return artifact.with_name(artifact.name + suffix)


def _record_hash(artifact: Path) -> str | None:
    record = record_path(artifact)
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text()).get(PLAN_RECORD_KEY if artifact.name.endswith(".plan") else RECORD_KEY)
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def verify_repository(repo: Path) -> list[str]:
    """Problems with the artifacts of `repo`, one line each naming the file; [] when every hash matches."""
    repo = Path(repo)
    if not repo.is_dir():
        return [f"model repository {repo} does not exist"]
    try:
        manifest = read_manifest(repo)
    except (OSError, ValueError) as exc:
        return [f"{repo / MANIFEST}: cannot be read: {exc}"]
    problems = []
    seen = set()
    for f in model_files(repo):
        rel = _rel(repo, f)
        seen.add(rel)
        artifact = f.name.endswith(ARTIFACT_SUFFIXES)
        expected = {}
        if manifest is not None and rel in manifest:
            expected[MANIFEST] = manifest[rel].get("sha256")
        record = _record_hash(f) if artifact else None
        if record:
            expected[record_path(f).name] = record
        if not expected:
            if artifact:
                problems.append(
                    f"{f}: no recorded hash (not in {MANIFEST}, no {record_path(f).name}); "
                    f"re-run `make export` or `python -m repository.integrity --repo {repo} --write`"
                )
            elif manifest is not None:
                problems.append(
                    f"{f}: not in {MANIFEST}: a file the model loads was added or replaced after export; "
                    f"re-run `make export` or `python -m repository.integrity --repo {repo} --write`"
                )
            continue
        actual = _sha256(f)
        for source, want in expected.items():
            if actual != want:
                problems.append(
                    f"{f}: sha256 {actual[:16]}... does not match {source} ({str(want)[:16]}...): "
                    "the file was modified or corrupted after export"
                )
    for rel in sorted(set(manifest or {}) - seen):
        problems.append(f"{repo / rel}: listed in {MANIFEST} but missing")
    for model in model_dirs(repo):
        for record in sorted(model.glob(f"[0-9]*/*{RECORD_SUFFIX}")):
            suffix = PLAN_RECORD_SUFFIX if record.name.endswith(PLAN_RECORD_SUFFIX) else RECORD_SUFFIX
            artifact = record.with_name(record.name.removesuffix(suffix))
            rel = _rel(repo, artifact)
            if artifact.name.endswith(ARTIFACT_SUFFIXES) and not artifact.exists() and rel not in (manifest or {}):
                problems.append(f"{artifact}: recorded in {record.name} but missing")
    return problems


def failed_models(repo: Path) -> dict[str, list[str]]:
    """verify_repository grouped by model folder name."""
    repo = Path(repo).resolve()
    out: dict[str, list[str]] = {}
    for problem in verify_repository(repo):
        path = Path(problem.split(":", 1)[0])
        try:
            name = path.resolve().relative_to(repo).parts[0]
        except (ValueError, IndexError):
            name = ""
        out.setdefault(name, []).append(problem)
    return out


# -- leaks -----------------------------------------------------------------------------------
def _onnx_strings(path: Path) -> Iterator[tuple[str, str]]:
    """(field, text) for the human-readable fields of an ONNX file: doc strings, metadata (of the model, the
    graphs, functions and nodes: the dynamo exporter writes `pkg.torch.onnx.stack_trace` per node), names."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    yield "producer_name", model.producer_name
    yield "doc_string", model.doc_string
    for p in model.metadata_props:
        yield f"metadata_props[{p.key}]", p.value
    graphs = [("graph", model.graph)] + [("function", fn) for fn in model.functions]
    while graphs:
        where, g = graphs.pop()
        yield f"{where}.doc_string", g.doc_string
        for p in getattr(g, "metadata_props", []):
            yield f"{where}.metadata_props[{p.key}]", p.value
        for n in g.node:
            yield f"{where} node doc_string", n.doc_string
            yield f"{where} node name", n.name
            for p in getattr(n, "metadata_props", []):
                yield f"{where} node metadata_props[{p.key}]", p.value
            for a in n.attribute:
                if a.type == onnx.AttributeProto.STRING:
                    yield f"{where} node attribute {a.name}", a.s.decode(errors="replace")
                if a.type == onnx.AttributeProto.GRAPH:
                    graphs.append((f"{where} subgraph", a.g))
        for t in getattr(g, "initializer", []):
            yield f"{where} initializer name", t.name
            if t.data_location == onnx.TensorProto.EXTERNAL:
                for entry in t.external_data:
                    yield f"{where} initializer external_data", entry.value


def scan_artifacts(repo: Path, secrets: Iterable[str] = ()) -> list[str]:
    """Build-machine paths (/root/, /home/, /tmp/, /builds/ ...) or any of `secrets` inside an artifact or a
    record of `repo`: one problem per file and field, naming both and giving the first path found."""
    repo = Path(repo)
    secrets = [s for s in secrets if s]
    problems = []
    files = list(artifact_files(repo))
    files += [record_path(f) for f in files if record_path(f).is_file()]
    for f in files:
        data = f.read_bytes()
        if any(secret.encode() in data for secret in secrets):
            problems.append(f"{f}: contains a secret (the admin key)")
        found: dict[str, tuple[int, str]] = {}
        if f.suffix == ".onnx":
            for where, text in _onnx_strings(f):
                m = LEAK_PATTERN.search(text.encode(errors="replace")) if text else None
                if m:
                    n, first = found.get(where, (0, m.group().decode(errors="replace")))
                    found[where] = (n + 1, first)
        for where, (n, first) in found.items():
            times = f" ({n} fields)" if n > 1 else ""
            problems.append(f"{f}: {where}{times} holds a build-machine path, e.g. {first!r}")
        m = LEAK_PATTERN.search(data)
        if m and not found:
            problems.append(f"{f}: holds a build-machine path {m.group().decode(errors='replace')!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=Path("model_repository"), help="model repository")
    p.add_argument("--write", action="store_true", help=f"record the artifact hashes in <repo>/{MANIFEST}")
    p.add_argument("--scan", action="store_true", help="also look for build-machine paths and the admin key")
    p.add_argument("--admin-key-file", type=Path, help="key to look for with --scan (else $TRITON_ADMIN_KEY)")
    args = p.parse_args(argv)
    if not args.repo.is_dir():
        p.error(f"model repository {args.repo} does not exist")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.write:
        path = write_manifest(args.repo)
        print(f"wrote {path}")
    problems = verify_repository(args.repo)
    if args.scan:
        key = args.admin_key_file.read_text().strip() if args.admin_key_file else os.environ.get("TRITON_ADMIN_KEY", "")
        problems += scan_artifacts(args.repo, [key])
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.repo}: {sum(1 for _ in model_files(args.repo))} file(s) verified")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
