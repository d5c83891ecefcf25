"""`make perf`: load-test every model and ensemble with perf_analyzer and measure the baselines in the same run.

    python -m perf.run --repo model_repository --artifacts artifacts            # full run (~10-15 min)
    python -m perf.run --repo build/test/model_repository --artifacts build/test/artifacts --quick

1. Input data files from the project's data (perf/inputs.py), one per kind of request.
2. Two real tritonservers over copies of the repository with the response cache off (every request is
   computed; `recommend_cached` keeps it on): the cpu configs as committed, and the same configs
   without dynamic_batching.
3. Every scenario of perf/scenarios/ point by point with perf_analyzer (raw CSV + JSON per point). For
   nhits, reservoir and similarity the sweep is followed at once by the batching-off points and the
   in-process baselines (PyTorch eager batch 1; ONNX Runtime FP32 / INT8 at batch 1, at the batch the
   server formed and at 64; ONNX Runtime's op profile at 64), while both servers sit idle, so the two
   sides of each ratio are minutes, not a whole run, apart.
4. The shared-memory comparison and the 1,000-asset timing (clients helpers).
5. summary.json (ratios, goals) and the report (perf/report.md + PNGs).

Results go to perf/results/<run id>/ with `perf/results/latest` pointing at the newest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from models import spec
from perf import analysis, analyzer, baselines, environment, inputs
from perf import repo as repos
from perf import scenarios as sc

log = logging.getLogger("perf.run")

DEFAULT_OUT = spec.ROOT / "perf" / "results"
QUICK = analyzer.Measurement(interval_ms=500, stability=50, max_trials=3)
ASSETS = 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m perf.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=spec.MODEL_REPOSITORY, help="model repository with exported ONNX")
    p.add_argument("--artifacts", type=Path, default=spec.ARTIFACTS, help="artifacts (data/, checkpoints/, reports/)")
    p.add_argument("--scenarios", type=Path, default=sc.SCENARIO_DIR, help="directory of scenario YAML files")
    p.add_argument("--models", help="comma-separated scenario or model names (default: all scenarios)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results root (default perf/results)")
    p.add_argument("--report-dir", type=Path, default=spec.ROOT / "perf", help="where report.md and PNGs go")
    p.add_argument("--budget-ms", type=float, default=analysis.BUDGET_MS, help="p99 budget for the chosen point")
    p.add_argument("--quick", action="store_true", help="short windows, two points per sweep (tests, smoke runs)")
    p.add_argument("--baseline-seconds", type=float, default=3.0, help="wall time per in-process baseline")
    p.add_argument(
        "--compare",
        metavar="CONFIG",
        help="also serve every model with configs/CONFIG.pbtxt on a second server and measure each scenario's "
        "sweep there right after the committed one (e.g. cpu_fp32 / cpu_int8: the other precision)",
    )
    p.add_argument("--skip-batching-off", action="store_true")
    p.add_argument("--skip-baselines", action="store_true")
    p.add_argument("--skip-extras", action="store_true", help="no shared-memory comparison, no 1,000-asset timing")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if not args.repo.is_dir():
        p.error(f"model repository {args.repo} does not exist: run `make export` (or `make export-small`)")
    if not (args.artifacts / "data" / "manifest.json").is_file():
        p.error(f"no data under {args.artifacts}/data: run `make export` (or `make export-small`)")
    if args.budget_ms <= 0 or args.baseline_seconds <= 0:
        p.error("--budget-ms and --baseline-seconds must be > 0")
    return args


def composing(repo: Path, model: str) -> tuple[str, ...]:
    """The model and, for an ensemble, its steps' models (their server statistics are recorded too)."""
    from serving.repository import load_config

    path = repo / model / "config.pbtxt"
    if not path.is_file():
        return (model,)
    cfg = load_config(path)
    return (model, *(s.model_name for s in cfg.ensemble_scheduling.step))


def input_file(spec_: dict, artifacts: Path, repo: Path, out: Path, cache: dict) -> Path:
    kind, n = spec_["kind"], int(spec_.get("n", 512))
    length = int(spec_.get("length", spec.INPUT_SIZE))
    key = (kind, n, length)
    if key not in cache:
        suffix = f"-{length}" if kind == "tick_streams" else ""
        cache[key] = inputs.write(kind, artifacts, repo, out / f"{kind}-{n}{suffix}.json", n=n, length=length)
    return cache[key]


def served_repository(repo: Path, dst: Path, scenarios: list[sc.Scenario]) -> Path:
    variants = {}
    for s in scenarios:
        for name, v in s.variants.items():
            variants[name] = (v["of"], repos.cache_on if v.get("response_cache") else repos.cache_off)
    return repos.copy_repository(repo, dst, edit=repos.cache_off, variants=variants)


def measure(point: analyzer.Point, urls: dict, out: Path, key: str, stats: tuple[str, ...]) -> dict | None:
    """One point; a failed point is logged and recorded (errors/) without ending the run."""
    try:
        return analyzer.run_point(point, urls, out, key=key, stats_models=stats)
    except analyzer.AnalyzerError as exc:
        log.error("%s", exc)
        errors = out.parent.parent / "errors"
        errors.mkdir(exist_ok=True)
        (errors / f"{point.stem}.txt").write_text(str(exc) + "\n")
        return None


def batching_off_repository(args, run_dir: Path, scenarios: list[sc.Scenario]) -> Path | None:
    todo = [s.model for s in scenarios if s.batching_off]
    if not todo or args.skip_batching_off:
        return None
    return repos.copy_repository(args.repo, run_dir / "repos" / "batching-off", models=todo, edit=repos.batching_off)


def _measure_all(pts: list, server, out: Path, key: str, stats, warmup: int) -> list[dict | None]:
    """Warm the model up, then measure each point on `server` (stats: the models whose statistics are recorded)."""
    urls = {"grpc": server.grpc_url, "http": server.http_url}
    if pts and warmup:
        analyzer.warmup(pts[0], urls, warmup)
    return [measure(p, urls, out, key, stats or (p.model,)) for p in pts]


@contextlib.contextmanager
def _phase(phases: dict[str, float], name: str):
    t0 = time.monotonic()
    yield
    phases[name] = phases.get(name, 0.0) + time.monotonic() - t0


def run_scenarios(
    served, off, scenarios, args, run_dir: Path, measurement, key: str, repo: Path, phases: dict, other=None
) -> None:
    """Each scenario in turn. For a model with goals the two sides of each ratio are measured back to back
    (sweep, then the same concurrencies without dynamic batching, then the in-process baselines), so that
    the load other work puts on the shared cores moves both sides alike."""
    files: dict = {}
    baselines_out: dict = {}
    warm: set[str] = set()
    n_warm = 16 if args.quick else 64
    for s in scenarios:
        log.info("scenario %s: %s", s.name, s.about)
        peak = None
        for i, run in enumerate(s.runs):
            model, out = s.run_model(run), run_dir / "runs" / s.name
            data = input_file(s.run_input(run), args.artifacts, args.repo, run_dir / "inputs", files)
            m = s.measurement if measurement is None else measurement
            stats = composing(repo, model)
            pts = sc.points(s, run, data, m, peak, args.quick)
            with _phase(phases, "served"):
                recs = _measure_all(pts, served, out, key, stats, 0 if model in warm else n_warm)
            warm |= {model} if pts else set()
            if i:
                continue
            peak = max((r["row"]["throughput"] for r in recs if r), default=None)
            if other is not None:  # the same points on the --compare config, right after
                with _phase(phases, "compare"):
                    _measure_all(
                        [replace(p, label=f"{p.label}@{args.compare}") for p in pts], other, out, key, stats, n_warm
                    )
            if off is not None and s.batching_off:
                run_off = {"name": "batching_off", "protocol": "grpc", "concurrency": s.batching_off["concurrency"]}
                with _phase(phases, "batching_off"):
                    _measure_all(sc.points(s, run_off, data, m, None, args.quick), off, out, key, None, n_warm)
            if s.baselines and not args.skip_baselines:
                with _phase(phases, "baselines"):
                    baselines_out[s.model] = baseline_for(s, args, run_dir)
                    (run_dir / "baselines.json").write_text(json.dumps(baselines_out, indent=2) + "\n")


def extras(server, args, key: str) -> dict:
    out: dict = {}
    try:
        from clients import shm

        out["shm"] = shm.compare(server.grpc_url, 3 if args.quick else 20, key=key)
    except ImportError:
        out["shm"] = {"skipped": "clients.shm is not available"}
    except Exception as exc:  # the comparison is a report section, not a reason to lose the run
        log.warning("shared-memory comparison failed: %s", exc)
        out["shm"] = {"error": str(exc)}
    try:
        from clients import Client

        x = inputs.arrays_for("windows", args.artifacts, args.repo, ASSETS)["window"]  # (1000, 168)
        times = []
        with Client(server.grpc_url) as c:
            if not hasattr(c, "forecast_assets"):
                raise ImportError("clients.Client has no forecast_assets")
            c.forecast_assets(x)  # warm-up, also reads the model's batch limits
            for _ in range(3 if args.quick else 10):
                t0 = time.perf_counter()
                result = c.forecast_assets(x)
                times.append(time.perf_counter() - t0)
            rows = int(np.asarray(result.values).shape[0])
            options = {"batch_size": "largest preferred batch size of the config", "concurrency": c.concurrency}
        ms = np.asarray(times) * 1e3
        out["assets_1000"] = {
            "windows": ASSETS,
            "rows_returned": rows,
            "model": "nhits",
            "helper": "clients.Client.forecast_assets (gRPC)",
            "options": options,
            "p50_ms": float(np.percentile(ms, 50)),
            "max_ms": float(ms.max()),
            "runs": len(times),
            "goal": "< 1000 ms",
            "met": bool(np.percentile(ms, 50) < 1000),
        }
    except ImportError as exc:
        out["assets_1000"] = {"skipped": str(exc)}
    except Exception as exc:
        log.warning("1,000-asset timing failed: %s", exc)
        out["assets_1000"] = {"error": str(exc)}
    return out


def served_batch(run_dir: Path, name: str, budget_ms: float) -> int:
    sweep = analysis.series(analysis.load_records(run_dir), f"{name}.sweep")
    if not sweep:
        return 1
    ref = analysis.chosen(sweep, budget_ms) or max(sweep, key=lambda f: f["throughput"])
    return max(1, int(round(ref["avg_batch"] or 1)))


def int8_accuracy(artifacts: Path, name: str) -> dict | None:
    path = artifacts / "reports" / "calibration.json"
    if not path.is_file():
        return None
    acc = json.loads(path.read_text()).get("models", {}).get(name, {}).get("accuracy")
    return {"met": bool(acc.get("met")), "reason": acc.get("reason", ""), "goal": acc.get("goal")} if acc else None


def baseline_for(s: sc.Scenario, args, run_dir: Path) -> dict:
    """In-process baselines of one scenario's model on the scenario's input data."""
    secs = 0.5 if args.quick else args.baseline_seconds
    name = s.model
    if s.input_data["kind"] == "texts":  # the text search: its in-process baseline embeds one text per call
        texts = inputs.texts_for(args.artifacts, int(s.input_data.get("n", 512)))
        acc = int8_accuracy(args.artifacts, "text_encoder")
        return {
            "int8_accuracy": acc,
            "sentence_transformers": baselines.sentence_transformers(args.artifacts, texts, secs).as_dict(),
        }
    rows = inputs.arrays_for(s.input_data["kind"], args.artifacts, args.repo, int(s.input_data.get("n", 512)))
    entry: dict = {"int8_accuracy": int8_accuracy(args.artifacts, name)}
    if "eager" in s.baselines:
        entry["eager"] = baselines.eager(name, args.artifacts, rows, secs).as_dict()
    if "ort" in s.baselines:
        from serving.repository import served_file

        threads = baselines.config_threads(args.repo, name)
        b = served_batch(run_dir, name, args.budget_ms)
        entry["served_batch"] = b
        entry["served_precision"] = "int8" if served_file(args.repo, name).name == spec.ONNX_INT8 else "fp32"
        entry["ort"] = {}
        for precision, filename in (("fp32", spec.ONNX_FP32), ("int8", spec.ONNX_INT8)):
            if not (spec.version_dir(name, args.repo) / filename).is_file():
                log.warning("%s: no %s, no %s baseline", name, filename, precision)
                continue
            entry["ort"][precision] = {
                str(batch): baselines.ort(name, args.repo, precision, rows, batch, secs, threads).as_dict()
                for batch in sorted({1, b, analysis.INT8_BATCH})
            }
        if set(entry["ort"]) == {"fp32", "int8"}:
            entry["int8_paired"] = {
                str(batch): baselines.paired(name, args.repo, rows, batch, secs, threads)
                for batch in (1, analysis.INT8_BATCH)
            }
            runs = 3 if args.quick else 10
            entry["op_profile"] = {
                p: baselines.op_profile(name, args.repo, p, rows, analysis.INT8_BATCH, threads, runs)
                for p in ("fp32", "int8")
            }
    return entry


def check_exported(repo: Path, scenarios: list[sc.Scenario]) -> list[str]:
    missing = []
    for s in scenarios:
        for run in s.runs:
            for m in composing(repo, s.base_model(s.run_model(run))):
                if m in spec.EXPORTED or m == spec.STREAM.name:
                    path = spec.version_dir(m, repo) / spec.ONNX_FP32
                    if not path.is_file():
                        missing.append(str(path))
    return sorted(set(missing))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    wanted = set(args.models.split(",")) if args.models else None
    scenarios = sc.load_all(args.scenarios, wanted)
    if not scenarios:
        print(f"error: no scenario in {args.scenarios} matches {args.models!r}", file=sys.stderr)
        return 2
    problems = [p for s in scenarios for p in sc.validate(s, args.repo)]
    if problems:
        print("error: scenario problems:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    missing = check_exported(args.repo, scenarios)
    if missing:
        print(f"error: {missing[0]} (and {len(missing) - 1} more) missing: run `make export` first", file=sys.stderr)
        return 2
    try:
        pa_version = analyzer.version()
    except analyzer.AnalyzerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    run_id = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.out / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    latest = args.out / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_id)
    # The shared-memory API is restricted: this run's servers, perf_analyzer and clients.shm share one key,
    # passed through the environment and never written to the results.
    key = os.environ.setdefault("TRITON_ADMIN_KEY", secrets.token_urlsafe(24))
    measurement = QUICK if args.quick else None
    env = {
        "run": {
            "id": run_id,
            "command": "python -m perf.run " + " ".join(argv if argv is not None else sys.argv[1:]),
            "repo": str(args.repo),
            "artifacts": str(args.artifacts),
            "quick": args.quick,
            "budget_ms": args.budget_ms,
            "compare": args.compare,
            "scenarios": [s.name for s in scenarios],
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "n_items": _n_items(args.artifacts),
        },
        "machine": environment.machine(),
        "versions": environment.versions(perf_analyzer=pa_version),
        "configs": served_configs(args.repo, scenarios),
    }
    (run_dir / "env.json").write_text(json.dumps(env, indent=2) + "\n")
    phases: dict[str, float] = {}
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        with _phase(phases, "servers_start"):
            served_repo = served_repository(args.repo, run_dir / "repos" / "served", scenarios)
            off_repo = batching_off_repository(args, run_dir, scenarios)
            served = stack.enter_context(repos.serve(served_repo, run_dir / "server-served"))
            off = stack.enter_context(repos.serve(off_repo, run_dir / "server-batching-off")) if off_repo else None
            other = None
            if c := args.compare:
                other_repo = repos.copy_repository(args.repo, run_dir / "repos" / c, edit=repos.cache_off, config=c)
                other = stack.enter_context(repos.serve(other_repo, run_dir / f"server-{c}", config=c))
            env["versions"]["tritonserver"] = repos.server_version(served.http_url)
        run_scenarios(served, off, scenarios, args, run_dir, measurement, key, served_repo, phases, other)
        with _phase(phases, "extras"):
            more = {} if args.skip_extras else extras(served, args, key)
    (run_dir / "extras.json").write_text(json.dumps(more, indent=2) + "\n")
    env["run"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    env["run"]["phases_s"] = {k: round(v, 1) for k, v in phases.items()}
    env["machine_end"] = environment.machine()
    (run_dir / "env.json").write_text(json.dumps(env, indent=2) + "\n")
    shutil.rmtree(run_dir / "repos", ignore_errors=True)  # links and edited configs only

    summary = analysis.summarize(run_dir, args.budget_ms)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"results: {run_dir} ({time.monotonic() - t0:.0f} s)")
    if not args.no_report:
        from perf import report

        path = report.write(run_dir, args.report_dir)
        print(f"report: {path}")
    for g in summary["goals"]:
        state = {True: "met", False: "MISSED", None: "n/a"}[g["met"]]
        value = "n/a" if g["value"] is None else f"{g['value']:.2f}"
        print(f"  {state:6s} {g['model']:12s} {g['goal']}: {value} (goal {g['target']})")
    return 0


def served_configs(repo: Path, scenarios: list[sc.Scenario]) -> dict:
    """The committed cpu-config settings each measured model was served with."""
    from perf.search import settings
    from serving.repository import load_config

    return {
        s.model: settings(load_config(repo / s.model / "configs" / "cpu.pbtxt"))
        for s in scenarios
        if (repo / s.model / "configs" / "cpu.pbtxt").is_file()
    }


def _n_items(artifacts: Path) -> int | None:
    try:
        from models import data

        return int(data.manifest(artifacts)["files"]["catalog.npy"]["shape"][0])
    except (OSError, KeyError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())
