"""Triton on the GPU: serve the models with the torch_py backend, check them, measure them with perf_analyzer.

    python -m perf.gpu.serve --preflight                                     # what this machine has
    python -m perf.gpu.serve --artifacts artifacts --out perf/results/gpu_serving.json     # GPU machine
    python -m perf.gpu.serve --synthesize --config torch_cpu --quick --out /tmp/serving.json   # CPU, here

Assemble a repository (perf.gpu.repository), start tritonserver 2.51.0 from the nvidia-pytriton wheel with
`--model-config-name=torch_gpu` or `torch_cpu`, check every model's served outputs against PyTorch FP32 on
the CPU, run perf_analyzer (command and CSV through perf.analyzer) per model and concurrency, write JSON
matching perf.gpu.schema.SERVING_SCHEMA. The GPU image lacks pyzmq and tritonclient: pytriton is found
without importing it, HTTP goes through urllib, and perf_analyzer is a binary (PATH, --perf-analyzer or the
carried build/gpu-carry/perf_analyzer.xz) given the wheel's libcudart and libb64 when the system has none.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import lzma
import os
import platform
import shutil
import site
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from models import spec
from perf import analyzer, gpu_probe, inputs
from perf.gpu import repository, schema, weights
from serving import server as serving_server
from serving.server import ADMIN_HEADER, ServerError, TritonServer, free_port

log = logging.getLogger("perf.gpu.serve")

BACKEND_NAME = "torch_py"
BACKEND_SOURCE = Path(__file__).resolve().parent / "torch_backend.py"
CARRY = spec.ROOT / "build" / "gpu-carry"
RUN_DIR = spec.ROOT / "build" / "gpu" / "triton-run"
MODELS = (*repository.BASE, *repository.ENSEMBLES)
SERVER_US = ("queue", "compute_input", "compute_infer", "compute_output")
DATATYPES = {"FP32": np.float32, "INT64": np.int64}


def locate_pytriton() -> Path:
    """<site>/pytriton/tritonserver, found without running pytriton/__init__.py."""
    found = importlib.util.find_spec("pytriton")
    if found is None or not found.submodule_search_locations:
        raise ServerError(
            "nvidia-pytriton is not importable: `make venv` here; on a GPU machine unpack the carried bundle "
            "(docs/GPU.md) and put its folder on PYTHONPATH"
        )
    root = Path(next(iter(found.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise ServerError(f"no tritonserver binary under {root}")
    return root


def pytriton_lookup():
    """serving.server finds pytriton by importing it; here it is found without importing."""
    return mock.patch.object(serving_server, "pytriton_dir", locate_pytriton)


def missing_libs(binary: Path, env: dict[str, str]) -> list[str]:
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return [f"ldd failed: {exc}"]
    return [line.split("=>")[0].strip() for line in out.splitlines() if "not found" in line]


def perf_analyzer_path(explicit: Path | None, run_dir: Path) -> Path | None:
    if explicit is not None:
        return explicit
    for candidate in (shutil.which("perf_analyzer"), Path(sys.executable).parent / "perf_analyzer"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    packed = CARRY / "perf_analyzer.xz"
    if not packed.is_file():
        return None
    target = run_dir / "bin" / "perf_analyzer"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(lzma.decompress(packed.read_bytes()))
        target.chmod(0o755)
    return target


def perf_analyzer_env(run_dir: Path) -> dict[str, str]:
    """LD_LIBRARY_PATH with a folder of the sonames perf_analyzer asks for, linked to the wheel's renamed copies."""
    shim = run_dir / "lib"
    shim.mkdir(parents=True, exist_ok=True)
    libs = locate_pytriton().parent.parent / "nvidia_pytriton.libs"
    for soname, pattern in (("libcudart.so.12", "libcudart-*.so.12*"), ("libb64.so.0d", "libb64-*.so.0d")):
        found = sorted(libs.glob(pattern))
        if found and not (shim / soname).exists():
            (shim / soname).symlink_to(found[0])
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(shim), env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    return env


def server_pythonpath(stub_site: Path | None) -> str:
    """What the python backend stub must import: the stub's numpy (optional), the repository, this Python's packages."""
    parts = [str(stub_site)] if stub_site else []
    parts += [str(spec.ROOT), *site.getsitepackages()]
    parts += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(parts))


class GpuTritonServer(TritonServer):
    """serving.server.TritonServer with the torch_py backend instead of ONNX Runtime's (which the GPU machines
    lack and these repositories do not use), without importing pytriton or tritonclient."""

    stub_site: Path | None = None

    def start(self, timeout: float = 300.0) -> GpuTritonServer:
        no_ort = self.run_dir / "no-onnxruntime"
        no_ort.mkdir(parents=True, exist_ok=True)
        with (
            pytriton_lookup(),
            mock.patch.object(serving_server, "native_backend", lambda: no_ort),
            mock.patch.dict(os.environ, PYTHONPATH=server_pythonpath(self.stub_site)),
        ):
            backends = serving_server.assemble_backends(self.run_dir)
            (backends / BACKEND_NAME).mkdir(exist_ok=True)
            shutil.copy2(BACKEND_SOURCE, backends / BACKEND_NAME / "model.py")
            super().start(timeout)
        return self

    def unavailable_models(self) -> dict[str, str]:
        headers = {ADMIN_HEADER: self.key, "Content-Type": "application/json"}
        req = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", b"{}", headers, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            index = json.loads(r.read())
        return {m["name"]: m.get("reason", "") or m.get("state", "") for m in index if m.get("state") != "READY"}


def http_infer(url: str, model: str, arrays: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """One inference over Triton's HTTP/REST v2 protocol with JSON tensors."""
    names = {np.dtype(v): k for k, v in DATATYPES.items()}
    feeds = [
        {"name": n, "shape": list(a.shape), "datatype": names[a.dtype], "data": a.ravel().tolist()}
        for n, a in arrays.items()
    ]
    body = json.dumps({"inputs": feeds, "outputs": [{"name": n} for n in outputs]}).encode()
    req = urllib.request.Request(f"http://{url}/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            reply = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{model}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:300]}") from exc
    return {o["name"]: np.asarray(o["data"], DATATYPES[o["datatype"]]).reshape(o["shape"]) for o in reply["outputs"]}


def n_users_of(mods: dict, default: int) -> int:
    users = mods.get("user_embedding") or getattr(mods.get("recommend"), "users", None)
    return int(users.table.shape[0]) if users is not None else default


def check(server: GpuTritonServer, mods: dict, precision: str) -> list[dict]:
    """Each served model's outputs against its FP32 CPU module (perf.gpu.weights.load_all) on 16 rows:
    relative error <= 1e-4 (1e-2 in half precision), top-k agreement >= 0.99 (0.95)."""
    tol, min_agreement = (1e-4, 0.99) if precision == "fp32" else (1e-2, 0.95)
    out = []
    for model, module in mods.items():
        m_spec = spec.MODELS[model]
        record = dict.fromkeys(schema.CHECK) | {"model": model, "status": "ok", "rows": 0}
        try:
            xs = weights.inputs(model, 16, 1, n_users_of(mods, spec.N_USERS))[0]
            arrays = {t.name: x for t, x in zip(m_spec.inputs, xs, strict=True)}
            got = http_infer(server.http_url, model, arrays, [t.name for t in m_spec.outputs])
            with torch.inference_mode():
                ref = weights.Runner(module, None, None, "cpu")(*(torch.from_numpy(x) for x in xs))
            names = [t.name for t in m_spec.outputs][: len(ref)]  # the in-process forecast gives the blend only
            rel, agreement = weights.compare([got[n] for n in names], [r.numpy() for r in ref])
            record |= {"rows": len(xs[0]), "rel_err": float(f"{rel:.3e}")}
            record["topk_agreement"] = None if agreement is None else round(agreement, 4)
            if not np.isfinite(record["rel_err"]) or record["rel_err"] > tol:
                record.update(status="failed", reason=f"relative error {record['rel_err']} above {tol:g}")
            elif agreement is not None and record["topk_agreement"] < min_agreement:
                record.update(status="failed", reason=f"top-k agreement {record['topk_agreement']} too low")
        except Exception as exc:  # a failed check is a result, not a crash
            record.update(status="failed", reason=str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
        shown = (record[k] for k in ("status", "rel_err", "topk_agreement"))
        log.info("check %-15s %s rel_err=%s topk=%s %s", model, *shown, record["reason"] or "")
        out.append(record)
    return out


def parse_csv(path: Path) -> dict:
    """perf_analyzer's CSV (parsed by perf.analyzer) in the serving schema's fields and units (µs)."""
    row = analyzer.parse_csv(path)[-1]
    us = {k: round(row[f"{k}_ms"] * 1000, 3) for k in ("p50", "p90", "p95", "p99")}
    us["avg"] = round(row["avg_ms"] * 1000, 3) if row["avg_ms"] is not None else us["p50"]
    server = {k: row["breakdown_us"][k] for k in SERVER_US if k in row["breakdown_us"]}
    return {"throughput_per_s": row["throughput"], "latency_us": us, "server_us": server}


def run_scenario(args, server: GpuTritonServer, pa: Path, model: str, concurrency: int, data: Path) -> dict:
    rec = dict.fromkeys(schema.SCENARIO) | {"model": model, "protocol": "grpc", "batch": args.batch}
    rec |= {"concurrency": concurrency, "status": "ok"}
    stem = f"pa_{model}_b{args.batch}_c{concurrency}"
    measurement = analyzer.Measurement(args.interval_ms, args.stability, args.max_trials)
    point = analyzer.Point(model, stem, "grpc", concurrency, None, args.batch, str(data), measurement=measurement)
    csv_path = args.run_dir / f"{stem}.csv"
    for stability in (args.stability, 999):  # second try: accept whatever three windows give
        cmd = [str(pa), *analyzer.command(point, server.grpc_url, csv_path, stability=stability)]
        env = perf_analyzer_env(args.run_dir)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.scenario_timeout_s)
        except subprocess.TimeoutExpired:
            return rec | {"status": "failed", "reason": f"perf_analyzer ran past {args.scenario_timeout_s:.0f} s"}
        (args.run_dir / f"{stem}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode == 0 and csv_path.is_file():
            relaxed = None if stability == args.stability else f"accepted at --stability-percentage {stability}"
            return rec | {"status": "ok", "reason": relaxed, **parse_csv(csv_path)}
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        rec.update(status="failed", reason=(tail[-1] if tail else f"exit code {proc.returncode}")[:300])
        if "stable" not in rec["reason"]:
            break
    return rec


def _shown(rec: dict) -> str:
    lat, srv = rec["latency_us"], {k: v / 1e3 for k, v in (rec["server_us"] or {}).items()}
    if not lat:
        return rec["reason"] or ""
    return (
        f"{rec['throughput_per_s']:.1f}/s p50 {lat['p50'] / 1e3:.3f} ms p99 {lat['p99'] / 1e3:.3f} ms, server queue "
        f"{srv.get('queue', 0):.3f} ms infer {srv.get('compute_infer', 0):.3f} ms"
    )


STUB_PROBE = (
    "import numpy, torch; a = torch.from_numpy(numpy.arange(4.0)); assert float(a.sum()) == 6.0; "
    "assert a.numpy().tolist() == [0.0, 1.0, 2.0, 3.0]; print(numpy.__version__)"
)


def preflight(args) -> tuple[dict, list[str]]:
    facts = {
        "python": sys.executable,
        "python_version": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "numpy": np.__version__,
    }
    problems: list[str] = []
    try:
        root = locate_pytriton()
        facts["tritonserver"] = str(root / "bin" / "tritonserver")
        with pytriton_lookup():
            env = serving_server.server_env()
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
        facts["stub"] = str(stub) if stub.is_file() else None
        if not stub.is_file():
            problems.append(f"the wheel has no python backend stub for Python {version}")
        elif missing := missing_libs(stub, env):
            facts["stub_missing_libs"] = missing
            problems.append(f"the python backend stub cannot load {missing} (LD_LIBRARY_PATH from serving.server)")
        else:
            facts["stub_missing_libs"] = []
        if missing := missing_libs(root / "bin" / "tritonserver", env):
            problems.append(f"tritonserver cannot load {missing}")
    except ServerError as exc:
        problems.append(str(exc))
    pa = None
    try:
        pa = perf_analyzer_path(args.perf_analyzer, args.run_dir)
    except OSError as exc:
        problems.append(f"perf_analyzer: {exc}")
    facts["perf_analyzer"] = str(pa) if pa else None
    if pa is None:
        problems.append(
            "no perf_analyzer: pip install tritonclient[all]==2.51.0, or carry build/gpu-carry/perf_analyzer.xz"
        )
    elif not problems or "nvidia-pytriton" not in problems[0]:
        facts["perf_analyzer_missing_libs"] = missing = missing_libs(pa, perf_analyzer_env(args.run_dir))
        if missing:
            problems.append(f"perf_analyzer cannot load {missing}")
    # torch and numpy must work together on the stub's Python path
    env = dict(os.environ, PYTHONPATH=server_pythonpath(args.stub_site))
    proc = subprocess.run([sys.executable, "-c", STUB_PROBE], capture_output=True, text=True, env=env, timeout=120)
    facts["stub_numpy"] = proc.stdout.strip() if proc.returncode == 0 else None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        problems.append(f"torch and numpy do not work together on the stub's path ({args.stub_site}): {tail}")
    return facts, problems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preflight", action="store_true", help="only report what is there and what is missing")
    repository.add_arguments(p)
    p.add_argument("--config", choices=(repository.CONFIG_GPU, repository.CONFIG_CPU), default=repository.CONFIG_GPU)
    p.add_argument("--perf-models", help="comma list to measure (default: all served); 'none' to skip perf_analyzer")
    p.add_argument("--concurrency", default="1,8,32", help="comma list")
    p.add_argument("--batch", type=int, default=1, help="rows per request (the dynamic batcher forms larger batches)")
    p.add_argument("--interval-ms", type=int, default=2000, help="perf_analyzer measurement window")
    p.add_argument("--max-trials", type=int, default=6)
    p.add_argument("--stability", type=int, default=15, help="perf_analyzer --stability-percentage")
    p.add_argument("--scenario-timeout-s", type=float, default=90.0)
    p.add_argument("--quick", action="store_true", help="CPU smoke: concurrency 1, 400 ms windows, 3 trials")
    p.add_argument("--perf-analyzer", type=Path, help="perf_analyzer binary")
    p.add_argument("--stub-site", type=Path, help="folder put first on the stub's PYTHONPATH (numpy<2 for the stub)")
    p.add_argument("--repo-out", type=Path, default=spec.ROOT / "build" / "gpu" / "model_repository")
    p.add_argument("--run-dir", type=Path, default=RUN_DIR)
    p.add_argument("--out", type=Path, default=Path("perf/results/gpu_serving.json"))
    args = p.parse_args(argv)
    repository.check_args(p, args, need_weights=not args.preflight)
    if args.perf_models is None:
        args.perf_models = args.models
    else:
        args.perf_models = () if args.perf_models == "none" else tuple(m for m in args.perf_models.split(",") if m)
        if not set(args.perf_models) <= set(args.models):
            p.error("--perf-models must be served too (--models)")
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    if args.quick:
        args.concurrency, args.interval_ms, args.max_trials, args.stability = [1], 400, 3, 50
    if args.stub_site is not None and not args.stub_site.is_dir():
        p.error(f"--stub-site {args.stub_site} does not exist")
    args.run_dir = args.run_dir.resolve()
    return args


def document(args, status: str, reason: str | None, sources, checks, scenarios, started: float) -> dict:
    on_gpu = args.config == repository.CONFIG_GPU
    try:
        pytriton = metadata.version("nvidia-pytriton")
    except metadata.PackageNotFoundError:  # a missing dist-info only loses a version string
        pytriton = None
    doc = {
        "schema_version": schema.SCHEMA_VERSION,
        "kind": "gpu_serving",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m perf.gpu.serve", *sys.argv[1:]]),
        "machine": gpu_probe.machine(torch.device("cuda" if on_gpu and torch.cuda.is_available() else "cpu")),
        "versions": gpu_probe.versions() | {"nvidia_pytriton": pytriton, "tritonserver": "2.51.0"},
        "config_name": args.config,
        "instance_kind": "KIND_GPU" if on_gpu else "KIND_CPU",
        "precision": args.precision if on_gpu else "fp32",
        "cuda_graphs": bool(args.cuda_graphs and on_gpu),
        "weights": sources,
        "status": status,
        "reason": reason,
        "checks": checks,
        "scenarios": scenarios,
        "seconds": round(time.perf_counter() - started, 1),
    }
    schema.validate(doc, schema.SERVING_SCHEMA)
    return doc


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    if args.preflight:
        facts, problems = preflight(args)
        for k, v in facts.items():
            print(f"{k:>28}: {v}")
        for line in problems:
            print(f"problem: {line}")
        print("preflight: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
        return 1 if problems else 0

    started = time.perf_counter()
    status, reason, checks, scenarios = "ok", None, [], []
    sources = repository.assemble_from(args, args.repo_out)
    ports = {f"{k}_port": free_port() for k in ("http", "grpc", "metrics")}
    server = GpuTritonServer(args.repo_out, **ports, config_name=args.config, run_dir=args.run_dir)
    server.stub_site = args.stub_site
    try:
        server.start(timeout=600)
        down = server.unavailable_models()
        served = tuple(m for m in args.models if m not in down)
        if down:
            status, reason = "failed", "; ".join(f"{m}: {r}" for m, r in down.items())[:600]
            for m, r in down.items():
                log.error("%s did not load: %s", m, r)
        mods = weights.load_all(None, served, where=lambda name: args.repo_out / name / "1")[0]
        checks = check(server, mods, args.precision if args.config == repository.CONFIG_GPU else "fp32")
        pa = perf_analyzer_path(args.perf_analyzer, args.run_dir) if args.perf_models else None
        if args.perf_models and pa is None:
            status, reason = "failed", "no perf_analyzer (see --preflight)"
        n_users = n_users_of(mods, args.n_users if args.synthesize else spec.N_USERS)
        for model in (m for m in args.perf_models if m in served and pa is not None):
            names = [t.name for t in spec.MODELS[model].inputs]
            xs = weights.inputs(model, 64, 1, n_users, seed=7)[0]  # 64 single-row requests
            data = inputs.write_arrays(dict(zip(names, xs, strict=True)), args.run_dir / f"input_{model}.json")
            for c in args.concurrency:
                rec = run_scenario(args, server, pa, model, c, data)
                log.info("perf %-15s c=%-3d %s %s", model, c, rec["status"], _shown(rec))
                scenarios.append(rec)
    except ServerError as exc:
        status, reason = "failed", str(exc).splitlines()[0][:600]
        log.error("%s", exc)
    finally:
        server.stop()
    doc = document(args, status, reason, sources, checks, scenarios, started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"Triton {args.config} on {doc['machine']['device']}: {status} {reason or ''}")
    print(f"wrote {args.out}; server log {server.log_path}")
    return 0 if status == "ok" and not [c for c in checks if c["status"] != "ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
