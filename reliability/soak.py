"""Soak: hold the cpu target at the highest load it sustains for a set time, checking every answer.

    python -m reliability.soak --repo model_repository --artifacts artifacts --duration 600
    python -m reliability.soak --repo build/test/model_repository --artifacts build/test/artifacts --duration 60

Steps: build the request pool and its ONNX Runtime answers (every model and ensemble the repository serves,
`search` included: text -> tokenizer -> text_encoder -> similarity); start a real tritonserver
(serving.server) on free loopback ports; warm up; measure the closed-loop maximum (the same mix); then find
the load to hold, measured now: paced probes bisect the fraction of that maximum whose schedule lag stays
bounded (`--load auto`, the default; a number fixes the fraction instead); run paced at it for `--duration`
seconds; sample the resident memory of tritonserver and each python backend stub at start, every window and at
the end; scan the server log for the admin key. Writes `<out>/soak.json` and `<out>/soak.md`; exit 1 when an
answer was wrong, a request failed, the lag grew past its bound, memory grew by `--max-growth` or more, or the
key appeared in the log.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from reliability.load import (
    LAG_LIMIT_S,
    Endpoint,
    Mix,
    lag_bounded,
    measure_max,
    run_load,
    summarize,
    sustained_rate,
    timeline,
)
from reliability.reference import TARGETS, build_workload
from serving import procs

log = logging.getLogger("reliability.soak")

DEFAULT_OUT = Path("build/reliability")
HARMLESS = ("CudaDriverHelper", "NVML", "DCGM", "GPU metrics", "cuda", "CUDA")
# Error lines of the server log that are understood, and why.
EXPLAINED = {
    "into response cache: key": "two identical requests to a cached model finished together: both were answered, "
    "the second insert into the cache was refused",
}


def server_log_findings(text: str, key: str) -> dict:
    errors = [line for line in text.splitlines() if line[:1] == "E" and not any(h in line for h in HARMLESS)]
    explained: dict[str, int] = {}
    unexplained = []
    for line in errors:
        why = next((w for pattern, w in EXPLAINED.items() if pattern in line), None)
        if why:
            explained[why] = explained.get(why, 0) + 1
        else:
            unexplained.append(line)
    return {
        "admin_key_in_log": bool(key) and key in text,
        "explained_error_lines": explained,
        "unexplained_error_lines": unexplained[:20],
        "error_line_count": len(unexplained),
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f} %"


def markdown(report: dict) -> str:
    s, mem = report["soak"], report["memory"]
    lines = [
        "# Soak summary",
        "",
        f"- command: `{report['command']}`",
        f"- repository: `{report['repo']}` ({report['config_name']} target), targets: {', '.join(report['targets'])}",
        f"- maximum (closed loop, {report['max']['workers']} workers): **{report['max']['throughput']:.0f} requests/s**",
        f"- held: **{report['target_rate']:.0f} requests/s** ({report['load']:.0%} of maximum, "
        f"{report['load_choice']}) for **{report['seconds']:.0f} s**; achieved {report['achieved_rate']:.0f} "
        f"requests/s ({report['unsent']} scheduled requests not sent by the end: the server was behind)",
        f"- schedule lag over the run: {report['lag']}; bounded: **{report['lag_bounded']}**",
        f"- requests {s['requests']}, ok {s['ok']}, **wrong {s['wrong']}**, **errors {s['errors']}**",
        f"- latency of ok requests (ms): p50 {s['latency_ms'].get('p50')}, p95 {s['latency_ms'].get('p95')}, "
        f"p99 {s['latency_ms'].get('p99')}, max {s['latency_ms'].get('max')}",
        f"- resident memory, tritonserver + stubs: {mem['start_kb']['total'] / 1024:.0f} MiB at start, "
        f"{mem['end_kb']['total'] / 1024:.0f} MiB at end: **{mem['growth_pct']:+.2f} %** "
        f"({_pct(mem['growth_after_first_fifth_pct'])} from the first fifth of the run to the end)",
        f"- worst relative error of an answer (float outputs vs ONNX Runtime here): {s['max_rel_err']:.2g}",
        f"- admin key in server log: {report['server_log']['admin_key_in_log']}; "
        f"unexplained error lines in server log: {report['server_log']['error_line_count']}",
        f"- verdict: **{'PASS' if report['passed'] else 'FAIL'}** ({'; '.join(report['failures']) or 'all goals met'})",
        "",
        "| t (s) | requests/s | p50 ms | p99 ms | errors | wrong | max lag ms | RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    samples = {round(m["t_s"] / report["window_s"]): m["total_kb"] for m in mem["samples"]}
    for w in report["timeline"]:
        rss = samples.get(round(w["t_s"] / report["window_s"]))
        lines.append(
            f"| {w['t_s']:.0f} | {w['rate']} | {w['p50_ms']} | {w['p99_ms']} | {w['errors']} | {w['wrong']} | "
            f"{w['max_lag_ms']} | {rss / 1024:.0f} |"
            if rss
            else f"| {w['t_s']:.0f} | {w['rate']} | {w['p50_ms']} | {w['p99_ms']} | {w['errors']} | {w['wrong']} | "
            f"{w['max_lag_ms']} | |"
        )
    per = report["per_target"]
    lines += [
        "",
        "| target | requests | wrong | errors | p99 ms | worst rel. error |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for t, v in per.items():
        lines.append(
            f"| {t} | {v['requests']} | {v['wrong']} | {v['errors']} | {v['latency_ms'].get('p99')} | "
            f"{v['max_rel_err']:.2g} |"
        )
    return "\n".join(lines) + "\n"


def warm_max_batches(workload, grpc_url: str) -> None:
    """One request of max_batch_size rows per model: ONNX Runtime sizes its buffers for the largest batch the
    server can form, so the memory baseline is taken after that one-time growth, not before it."""
    import numpy as np

    from models import spec
    from reliability.load import Caller, Endpoint

    caller = Caller(Endpoint(grpc_url, grpc_url, timeout_s=120.0))
    try:
        for target, cases in workload.cases.items():
            size = spec.MODELS[target].max_batch_size
            arrays = {k: np.ascontiguousarray(np.resize(v, (size, *v.shape[1:]))) for k, v in cases[0].inputs.items()}
            try:
                caller.call("grpc", target, arrays)
            except Exception as exc:  # noqa: BLE001 - warm-up only; the soak counts real failures
                log.warning("warm-up of %s at batch %d failed: %s", target, size, exc)
    finally:
        caller.close()


def soak(args: argparse.Namespace) -> dict:
    from serving.server import TritonServer, free_port

    targets = tuple(t for t in TARGETS if not args.targets or t in args.targets.split(","))
    workload = build_workload(args.repo, args.artifacts, n=args.pool, targets=targets)
    server = TritonServer(
        args.repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        config_name=args.config_name,
        run_dir=args.out / "triton-run",
    )
    server.start(timeout=300)
    try:
        endpoint = Endpoint(
            server.grpc_url, server.http_url, timeout_s=args.timeout, production=not args.raw, retries=args.retries
        )
        mix = Mix.uniform(workload, args.http_share)
        log.info("warming up for %.0f s, then one request of max_batch_size per model", args.warmup)
        run_load(workload, endpoint, args.warmup, 4, mix=mix)
        warm_max_batches(workload, server.grpc_url)
        best, best_workers, steps = measure_max(workload, endpoint, args.probe_seconds)
        workers = max(2 * best_workers, 8)
        if args.load == "auto":
            load, probes = sustained_rate(workload, endpoint, best, workers, mix, args.lag_probe_seconds)
            choice = f"the highest of {len(probes)} paced probes whose lag stayed bounded"
        else:
            load, probes, choice = float(args.load), [], "--load"
        rate = load * best
        window = args.window or max(5.0, args.duration / 20)
        pid = server.process.pid
        start_mem = procs.memory(pid)
        samples = []
        next_sample = [0.0]

        def on_tick(elapsed: float) -> None:
            if elapsed >= next_sample[0]:
                m = procs.memory(pid)
                samples.append({"t_s": round(elapsed, 1), "total_kb": m["total"]})
                next_sample[0] += window

        log.info(
            "soak: %.0f requests/s (%.0f %% of %.0f) for %.0f s, %d workers",
            rate,
            load * 100,
            best,
            args.duration,
            workers,
        )
        run = run_load(workload, endpoint, args.duration, workers, rate=rate, mix=mix, on_tick=on_tick)
        end_mem = procs.memory(pid)
        alive = server.process.poll() is None and server.ready()
    finally:
        server.stop()
    growth = 100.0 * (end_mem["total"] - start_mem["total"]) / max(start_mem["total"], 1)
    # Growth once the first fifth of the run has warmed every batch shape up (arenas sized), to the end.
    later = [m["total_kb"] for m in samples if m["t_s"] >= args.duration / 5]
    steady = round(100.0 * (end_mem["total"] - later[0]) / later[0], 2) if later else None
    log_findings = server_log_findings(server.log_path.read_text(errors="replace"), server.key)
    summary = summarize(run.records)
    bounded, lag = lag_bounded(run, run.seconds)
    failures = []
    if not bounded:
        failures.append(f"the schedule lag was not bounded ({lag}; limit {LAG_LIMIT_S} s): the load was past capacity")
    if summary["wrong"]:
        failures.append(f"{summary['wrong']} wrong answers")
    if summary["errors"]:
        failures.append(f"{summary['errors']} errors")
    if growth >= args.max_growth:
        failures.append(f"memory grew {growth:.1f} % (limit {args.max_growth} %)")
    if log_findings["admin_key_in_log"]:
        failures.append("the admin key is in the server log")
    if not alive:
        failures.append("the server was not ready at the end")
    if log_findings["error_line_count"]:
        failures.append(f"{log_findings['error_line_count']} unexplained error lines in the server log")
    report = {
        "command": " ".join(["python -m reliability.soak", *args.argv]),
        "repo": str(args.repo),
        "config_name": args.config_name,
        "targets": list(workload.targets),
        "http_share": args.http_share,
        "client": "tritonclient" if args.raw else f"clients.Client (retries={args.retries})",
        "max": {"throughput": round(best, 1), "workers": best_workers, "steps": steps, "probe_s": args.probe_seconds},
        "load": load,
        "load_choice": choice,
        "load_probes": probes,
        "target_rate": round(rate, 1),
        "lag": lag,
        "lag_bounded": bounded,
        "workers": workers,
        "seconds": round(run.seconds, 1),
        "achieved_rate": round(run.throughput, 1),
        "unsent": run.unsent,
        "window_s": window,
        "soak": summary,
        "per_target": {t: summarize([r for r in run.records if r.target == t]) for t in workload.targets},
        "timeline": timeline(run.records, window),
        "memory": {
            "start_kb": start_mem,
            "end_kb": end_mem,
            "growth_pct": round(growth, 2),
            "growth_after_first_fifth_pct": steady,
            "samples": samples,
        },
        "server_log": log_findings,
        "server_ready_at_end": alive,
        "passed": not failures,
        "failures": failures,
    }
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=Path("model_repository"), help="model repository (exported)")
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="training artifacts (test-split inputs)")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of paced load (default 600)")
    p.add_argument(
        "--load",
        default="auto",
        help="fraction of the measured maximum to hold, or auto (default): the highest whose lag stays bounded",
    )
    p.add_argument("--lag-probe-seconds", type=float, default=12.0, help="seconds per paced probe of --load auto")
    p.add_argument("--probe-seconds", type=float, default=6.0, help="seconds per concurrency level of the maximum")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of unmeasured load first")
    p.add_argument("--window", type=float, default=0.0, help="timeline window in s (default duration / 20, >= 5)")
    p.add_argument("--pool", type=int, default=64, help="distinct requests per target")
    p.add_argument("--targets", help=f"comma-separated subset of {','.join(TARGETS)}")
    p.add_argument("--http-share", type=float, default=0.25, help="fraction of requests over HTTP (rest gRPC)")
    p.add_argument("--timeout", type=float, default=30.0, help="client timeout per request, s")
    p.add_argument("--raw", action="store_true", help="bare tritonclient calls instead of clients.Client")
    p.add_argument("--retries", type=int, default=0, help="clients.Client retries (default 0: count every error)")
    p.add_argument("--max-growth", type=float, default=5.0, help="memory growth limit, percent")
    p.add_argument("--config-name", default="cpu")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="soak.json, soak.md and the server run dir")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if not (args.repo / "nhits" / "1").is_dir():
        p.error(f"{args.repo} is not an exported model repository: run `make export` (or export-small)")
    if not (args.artifacts / "checkpoints").is_dir():
        p.error(f"{args.artifacts} has no checkpoints/: run `make export` (or export-small)")
    if args.load != "auto":
        try:
            if not 0 < float(args.load) <= 1:
                raise ValueError
        except ValueError:
            p.error("--load must be auto or a fraction in (0, 1]")
    if args.targets and not set(args.targets.split(",")) <= set(TARGETS):
        p.error(f"--targets: choose from {','.join(TARGETS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    report = soak(args)
    report["wall_s"] = round(time.monotonic() - t0, 1)
    (args.out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "soak.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {args.out / 'soak.json'} and {args.out / 'soak.md'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
