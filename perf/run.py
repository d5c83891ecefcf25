"""`make perf`: load-test every model and ensemble with perf_analyzer and measure the baselines in the same run.

    python -m perf.run --repo model_repository --artifacts artifacts            # full run (~10-15 min)
    python -m perf.run --repo build/test/model_repository --artifacts build/test/artifacts --quick

Two real tritonservers over copies of the repository, response cache off (every request is computed;
`recommend_cached` keeps it on): the committed cpu configs, and the same without dynamic_batching. Every
scenario of perf/scenarios/ is measured point by point on input files of the project's data. For a model
with baselines the sweep is followed at once by the batching-off points and the in-process baselines
(perf/baselines.py), so the two sides of each ratio are minutes, not a whole run, apart. A scenario with
`lanes` adds a third server of the `cpu_lanes` configs (priority lanes) and measures a critical client under a flood on both
(perf/trading.py, lanes/<model>.json); `client_ticks` times one sequence through StreamClient
(stream_client.json). Then the shared-memory comparison and the 1,000-asset timing (clients helpers),
summary.json and the report.
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
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from models import spec
from perf import baselines, environment, goals, inputs, perf_analyzer, servers, trading
from perf import scenarios as sc

log = logging.getLogger("perf.run")

DEFAULT_OUT = spec.ROOT / "perf" / "results"
QUICK = perf_analyzer.Measurement(interval_ms=500, stability=50, max_trials=3)
ASSETS = 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m perf.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=spec.MODEL_REPOSITORY, help="model repository with exported ONNX")
    p.add_argument("--artifacts", type=Path, default=spec.ARTIFACTS, help="artifacts (data/, checkpoints/, reports/)")
    p.add_argument("--scenarios", type=Path, default=sc.SCENARIO_DIR, help="directory of scenario YAML files")
    p.add_argument("--models", help="comma-separated scenario or model names (default: all scenarios)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results root (default perf/results)")
    p.add_argument("--report-dir", type=Path, default=spec.ROOT / "perf", help="where report.md and PNGs go")
    p.add_argument("--budget-ms", type=float, default=goals.BUDGET_MS, help="p99 budget for the chosen point")
    p.add_argument("--quick", action="store_true", help="short windows, two points per sweep (tests, smoke runs)")
    p.add_argument("--baseline-seconds", type=float, default=3.0, help="wall time per in-process baseline")
    p.add_argument(
        "--compare", metavar="CONFIG", help="each sweep also on a server of configs/CONFIG.pbtxt, e.g. cpu_int8"
    )
    p.add_argument("--skip-batching-off", action="store_true")
    p.add_argument("--skip-baselines", action="store_true")
    p.add_argument("--skip-extras", action="store_true", help="no shared-memory comparison, no 1,000-asset timing")
    p.add_argument(
        "--url",
        metavar="HOST:PORT",
        help="measure the Triton already running there (gRPC) instead of starting servers: no baselines, no "
        "batching-off, lanes or --compare servers, no extras (docs/gpu.md)",
    )
    p.add_argument("--http-url", metavar="HOST:PORT", help="with --url: its HTTP endpoint (default: port 8000)")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if not args.repo.is_dir():
        p.error(f"model repository {args.repo} does not exist: run `make export` (or `make export-small`)")
    if not (args.artifacts / "data" / "manifest.json").is_file():
        p.error(f"no data under {args.artifacts}/data: run `make export` (or `make export-small`)")
    if args.url:
        args.http_url = args.http_url or f"{args.url.rsplit(':', 1)[0]}:8000"
        args.skip_baselines = args.skip_batching_off = args.skip_extras = True
        if args.compare:
            p.error("--compare starts a server of its own: not with --url")
    if args.budget_ms <= 0 or args.baseline_seconds <= 0:
        p.error("--budget-ms and --baseline-seconds must be > 0")
    return args


def composing(repo: Path, model: str) -> tuple[str, ...]:
    """The model and, for an ensemble, its steps' models (their server statistics are recorded too)."""
    from serving.server import ensemble_steps

    return (model, *ensemble_steps(repo).get(model, ()))


def input_file(spec_: dict, artifacts: Path, repo: Path, out: Path, cache: dict) -> Path:
    kind, n = spec_["kind"], int(spec_.get("n", 512))
    length = int(spec_.get("length", spec.INPUT_SIZE))
    if (kind, n, length) not in cache:
        suffix = f"-{length}" if kind == "tick_streams" else ""
        path = out / f"{kind}-{n}{suffix}.json"
        cache[kind, n, length] = inputs.write(kind, artifacts, repo, path, n=n, length=length)
    return cache[kind, n, length]


def measure(pts: list[perf_analyzer.Point], server, out: Path, key: str, stats, warmup: int) -> list[dict | None]:
    """Warm the model up, then each point on `server` (stats: the models whose statistics are recorded).
    A failed point is logged and recorded (errors/) without ending the run."""
    urls = {"grpc": server.grpc_url, "http": server.http_url}
    if pts and warmup:
        perf_analyzer.warmup(pts[0], urls, warmup)
    records = []
    for p in pts:
        try:
            records.append(perf_analyzer.run_point(p, urls, out, key=key, stats_models=stats or (p.model,)))
        except perf_analyzer.AnalyzerError as exc:
            log.error("%s", exc)
            (out.parent.parent / "errors").mkdir(exist_ok=True)
            (out.parent.parent / "errors" / f"{p.stem}.txt").write_text(f"{exc}\n")
            records.append(None)
    return records


@contextlib.contextmanager
def _phase(phases: dict[str, float], name: str):
    t0 = time.monotonic()
    yield
    phases[name] = phases.get(name, 0.0) + time.monotonic() - t0


def run_scenarios(scenarios, running: dict, args, run_dir: Path, key: str, repo: Path, phases: dict) -> None:
    """Each scenario in turn; a model's sweep, batching-off points and baselines back to back (see the top)."""
    files: dict = {}
    baselines_out: dict = {}
    warm: set[str] = set()
    n_warm = 16 if args.quick else 64
    for s in scenarios:
        log.info("scenario %s: %s", s.name, s.about)
        m, out, peak = QUICK if args.quick else s.measurement, run_dir / "runs" / s.name, None
        for i, run in enumerate(s.runs):
            model = s.run_model(run)
            data = input_file(s.run_input(run), args.artifacts, args.repo, run_dir / "inputs", files)
            stats = composing(repo, model)
            pts = sc.points(s, run, data, m, peak, args.quick)
            with _phase(phases, "served"):
                records = measure(pts, running["served"], out, key, stats, 0 if model in warm else n_warm)
            warm |= {model} if pts else set()
            if i:
                continue
            peak = max((r["row"]["throughput"] for r in records if r), default=None)
            if "compare" in running:  # the same points on the --compare config, right after
                with _phase(phases, "compare"):
                    other = [replace(p, label=f"{p.label}@{args.compare}") for p in pts]
                    measure(other, running["compare"], out, key, stats, n_warm)
            if "batching_off" in running and s.batching_off:
                run_off = {"name": "batching_off", "protocol": "grpc", "concurrency": s.batching_off["concurrency"]}
                with _phase(phases, "batching_off"):
                    pts_off = sc.points(s, run_off, data, m, None, args.quick)
                    measure(pts_off, running["batching_off"], out, key, None, n_warm)
            if s.baselines and not args.skip_baselines:
                with _phase(phases, "baselines"):
                    baselines_out[s.model] = baseline_for(s, args, run_dir)
                    (run_dir / "baselines.json").write_text(json.dumps(baselines_out, indent=2) + "\n")
        with _phase(phases, "trading"):
            trading_path(s, running, args, run_dir, files)


def trading_path(s: sc.Scenario, running: dict, args, run_dir: Path, files: dict) -> None:
    """The scenario's `lanes` and `client_ticks` measurements (perf/trading.py); a failure is logged, not fatal."""
    quick = 0.3 if args.quick else 1.0
    if s.lanes and "lanes" in running:
        spec_ = s.lanes
        data = input_file(s.input_data, args.artifacts, args.repo, run_dir / "inputs", files)
        rows = inputs.arrays_for(s.input_data["kind"], args.artifacts, args.repo, 64)[spec.WINDOW.name]
        result = _section(
            f"{s.model} priority lanes",
            lambda: trading.lanes(
                {"lanes": running["lanes"], "no_lanes": running["served"]},
                s.model,
                rows,
                data,
                run_dir / "lanes",
                seconds=float(spec_.get("seconds", 10)) * quick,
                flood_concurrency=int(spec_.get("flood_concurrency", 16)),
                priority=int(spec_.get("priority", 1)),
                deadline_s=float(spec_.get("deadline_ms", 50)) / 1e3,
            ),
        )
        (run_dir / "lanes").mkdir(exist_ok=True)
        (run_dir / "lanes" / f"{s.model}.json").write_text(json.dumps(result, indent=2) + "\n")
    if s.client_ticks:
        from models import data as model_data

        series = model_data.load_series(args.artifacts, "test")[0]
        ticks = int(int(s.client_ticks.get("ticks", 2000)) * quick)
        result = _section("StreamClient ticks", lambda: trading.stream_ticks(running["served"].grpc_url, series, ticks))
        (run_dir / "stream_client.json").write_text(json.dumps(result, indent=2) + "\n")


def _section(what: str, measure_it: Callable[[], dict]) -> dict:
    try:
        return measure_it()
    except Exception as exc:  # a report section, not a reason to lose the run
        log.warning("%s failed: %s", what, exc)
        return {"error": str(exc)}


def assets_1000(server, args) -> dict:
    """clients.Client.forecast_assets on 1,000 test windows at once."""
    from clients import Client

    x = inputs.arrays_for("windows", args.artifacts, args.repo, ASSETS)["window"]  # (1000, 168)
    times = []
    with Client(server.grpc_url) as c:
        c.forecast_assets(x)  # warm-up, also reads the model's batch limits
        for _ in range(3 if args.quick else 10):
            t0 = time.perf_counter()
            result = c.forecast_assets(x)
            times.append(time.perf_counter() - t0)
        options = {"batch_size": "largest preferred batch size of the config", "concurrency": c.concurrency}
    ms = np.asarray(times) * 1e3
    return {
        "windows": ASSETS,
        "rows_returned": int(np.asarray(result.values).shape[0]),
        "model": "nhits",
        "helper": "clients.Client.forecast_assets (gRPC)",
        "options": options,
        "p50_ms": float(np.percentile(ms, 50)),
        "max_ms": float(ms.max()),
        "runs": len(times),
        "goal": "< 1000 ms",
        "met": bool(np.percentile(ms, 50) < 1000),
    }


def extras(server, args, key: str) -> dict:
    def shm_compare() -> dict:
        from clients import shm

        return shm.compare(server.grpc_url, 3 if args.quick else 20, key=key)

    return {
        "shm": _section("shared-memory comparison", shm_compare),
        "assets_1000": _section("1,000-asset timing", lambda: assets_1000(server, args)),
    }


def served_batch(run_dir: Path, name: str, budget_ms: float) -> int:
    sweep = goals.series(goals.load_records(run_dir), f"{name}.sweep")
    if not sweep:
        return 1
    ref = goals.chosen(sweep, budget_ms) or max(sweep, key=lambda f: f["throughput"])
    return max(1, int(round(ref["avg_batch"] or 1)))


def int8_accuracy(artifacts: Path, name: str) -> dict | None:
    path = artifacts / "reports" / "calibration.json"
    if not path.is_file():
        return None
    acc = json.loads(path.read_text()).get("models", {}).get(name, {}).get("accuracy")
    return {"met": bool(acc.get("met")), "reason": acc.get("reason", ""), "goal": acc.get("goal")} if acc else None


def baseline_for(s: sc.Scenario, args, run_dir: Path) -> dict:
    """In-process baselines of one scenario's model on the scenario's input data."""
    from repository.layout import served_file

    secs, n = 0.5 if args.quick else args.baseline_seconds, int(s.input_data.get("n", 512))
    name, repo = s.model, args.repo
    if s.input_data["kind"] == "texts":  # the text search: in-process searches of one text per call
        texts = inputs.texts_for(args.artifacts, n)
        entry = {"int8_accuracy": int8_accuracy(args.artifacts, "text_encoder")}
        if "search_loops" in s.baselines:
            entry |= baselines.search_loops(args.artifacts, repo, texts, secs)
        if "sentence_transformers" in s.baselines:
            entry["sentence_transformers"] = baselines.sentence_transformers(args.artifacts, texts, secs)
        return entry
    rows = inputs.arrays_for(s.input_data["kind"], args.artifacts, repo, n)
    entry: dict = {"int8_accuracy": int8_accuracy(args.artifacts, name)}
    if "eager" in s.baselines:
        entry["eager"] = baselines.eager(name, args.artifacts, rows, secs)
    if "ort" not in s.baselines:
        return entry
    threads, b = baselines.config_threads(repo, name), served_batch(run_dir, name, args.budget_ms)
    entry["served_batch"] = b
    entry["served_precision"] = "int8" if served_file(repo, name).name == spec.ONNX_INT8 else "fp32"
    entry["ort"] = {}
    for precision, filename in baselines.FILES.items():
        if not (spec.version_dir(name, repo) / filename).is_file():
            log.warning("%s: no %s, no %s baseline", name, filename, precision)
            continue
        entry["ort"][precision] = {
            str(batch): baselines.ort(name, repo, precision, rows, batch, secs, threads)
            for batch in sorted({1, b, goals.INT8_BATCH})
        }
    if set(entry["ort"]) == set(baselines.FILES):
        entry["int8_paired"] = {
            str(batch): baselines.paired(name, repo, rows, batch, secs, threads) for batch in (1, goals.INT8_BATCH)
        }
        entry["op_profile"] = {
            p: baselines.op_profile(name, repo, p, rows, goals.INT8_BATCH, threads, 3 if args.quick else 10)
            for p in baselines.FILES
        }
    return entry


def start_servers(start: Callable, scenarios: list[sc.Scenario], args) -> dict:
    """The run's servers: the served configs, and where scenarios ask for them batching-off, priority-lanes (cpu_lanes) and
    --compare servers (`start(name, config, **copy)` starts one over an edited copy of the repository)."""
    variants = {
        name: (v["of"], servers.cache_on if v.get("response_cache") else servers.cache_off)
        for s in scenarios
        for name, v in s.variants.items()
    }
    running = {"served": start("served", edit=servers.cache_off, variants=variants)}
    if (off := [s.model for s in scenarios if s.batching_off]) and not args.skip_batching_off:
        running["batching_off"] = start("batching-off", models=off, edit=servers.batching_off)
    if lanes := sorted({m for s in scenarios if s.lanes for m in composing(args.repo, s.model)}):
        running["lanes"] = start("lanes", models=lanes, config="cpu_lanes", edit=servers.cache_off)
    if args.compare:
        running["compare"] = start(args.compare, config=args.compare, edit=servers.cache_off)
    return running


def check_exported(repo: Path, scenarios: list[sc.Scenario]) -> list[str]:
    paths = {
        spec.version_dir(m, repo) / spec.ONNX_FP32
        for s in scenarios
        for run in s.runs
        for m in composing(repo, s.base_model(s.run_model(run)))
        if m in spec.EXPORTED or m == spec.STREAM.name
    }
    return sorted(str(p) for p in paths if not p.is_file())


def served_configs(repo: Path, scenarios: list[sc.Scenario]) -> dict:
    """The committed cpu-config settings each measured model was served with."""
    from common.triton import load_config
    from perf.model_analyzer import settings

    paths = {s.model: repo / s.model / "configs" / "cpu.pbtxt" for s in scenarios}
    return {model: settings(load_config(path)) for model, path in paths.items() if path.is_file()}


def _n_items(artifacts: Path) -> int | None:
    from models import data

    try:
        return int(data.manifest(artifacts)["files"]["catalog.npy"]["shape"][0])
    except (OSError, KeyError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    scenarios = sc.load_all(args.scenarios, set(args.models.split(",")) if args.models else None)
    if not scenarios:
        print(f"error: no scenario in {args.scenarios} matches {args.models!r}", file=sys.stderr)
        return 2
    if problems := [p for s in scenarios for p in sc.validate(s, args.repo)]:
        print("error: scenario problems:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    if missing := check_exported(args.repo, scenarios):
        print(f"error: {missing[0]} (and {len(missing) - 1} more) missing: run `make export` first", file=sys.stderr)
        return 2
    try:
        pa_version = perf_analyzer.version()
    except perf_analyzer.AnalyzerError as exc:
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
    env = {
        "run": {
            "id": run_id,
            "command": "python -m perf.run " + " ".join(argv if argv is not None else sys.argv[1:]),
            "repo": str(args.repo),
            "artifacts": str(args.artifacts),
            "quick": args.quick,
            "budget_ms": args.budget_ms,
            "compare": args.compare,
            "url": args.url,
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
    repos_dir = run_dir / "repos"
    with contextlib.ExitStack() as stack:

        def start(name: str, config: str = "cpu", **copy):
            """A server over repos/<name>, a copy of the repository edited by `copy`'s arguments."""
            repo = servers.copy_repository(args.repo, repos_dir / name, config=config, **copy)
            return stack.enter_context(servers.serve(repo, run_dir / f"server-{name}", config=config))

        with _phase(phases, "servers_start"):
            if args.url:
                running = {"served": servers.Remote(args.url, args.http_url)}
            else:
                running = start_servers(start, scenarios, args)
            env["versions"]["tritonserver"] = servers.server_version(running["served"].http_url)
        served_repo = args.repo if args.url else repos_dir / "served"
        run_scenarios(scenarios, running, args, run_dir, key, served_repo, phases)
        with _phase(phases, "extras"):
            more = {} if args.skip_extras else extras(running["served"], args, key)
    (run_dir / "extras.json").write_text(json.dumps(more, indent=2) + "\n")
    env["run"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    env["run"]["phases_s"] = {k: round(v, 1) for k, v in phases.items()}
    env["machine_end"] = environment.machine()
    (run_dir / "env.json").write_text(json.dumps(env, indent=2) + "\n")
    shutil.rmtree(repos_dir, ignore_errors=True)  # links and edited configs only

    summary = goals.summarize(run_dir, args.budget_ms)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"results: {run_dir} ({time.monotonic() - t0:.0f} s)")
    if not args.no_report:
        from perf import report

        print(f"report: {report.write(run_dir, args.report_dir)}")
    for g in summary["goals"]:
        state = {True: "met", False: "MISSED", None: "n/a"}[g["met"]]
        value = "n/a" if g["value"] is None else f"{g['value']:.2f}"
        print(f"  {state:6s} {g['model']:12s} {g['goal']}: {value} (goal {g['target']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
