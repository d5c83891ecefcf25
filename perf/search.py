"""Config search under a latency budget, in the spirit of Triton Model Analyzer's brute-force mode.

    python -m perf.search --models nhits,reservoir,similarity --budget-ms 10          # measure, change nothing
    python -m perf.search --models nhits --budget-ms 10 --apply                        # ... and write the winner

For each model, a small grid over the cpu config's instance count x ONNX Runtime intra-op threads
(points using more cores than the machine has are skipped), max_queue_delay_microseconds and
preferred batch sizes, plus the committed config itself. Every grid point is served by a real
tritonserver on a temporary copy of the repository holding only that model (response cache off) and
measured with perf_analyzer at each --concurrency. The winner is the highest throughput (over grid
points and concurrencies) whose p99 is within the budget. With --apply the winner is written into
<repo>/<model>/configs/cpu.pbtxt with a comment saying how it was chosen; without it nothing changes.
Results: perf/results/search/<id>/search.json (+ raw perf_analyzer CSV/JSON), `latest` pointing at it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from models import spec
from perf import analysis, analyzer, inputs
from perf import repo as repos
from serving.repository import load_config

log = logging.getLogger("perf.search")

DEFAULT_OUT = spec.ROOT / "perf" / "results" / "search"
MODELS = ("nhits", "reservoir", "similarity")
INSTANCES = (1, 2)
THREADS = (1, 2)
DELAYS_US = (100, 2000)
PREFERRED = ("none", "16,64")  # "none": Triton forms the largest batch it can within the delay
CONCURRENCY = (4, 16)
MEASUREMENT = analyzer.Measurement(interval_ms=1000, stability=50, max_trials=4)
INPUT_KIND = {
    "nhits": "windows",
    "reservoir": "windows",
    "similarity": "queries",
    "forecast_blend": "blend",
    "user_embedding": "user_ids",
}


@dataclass(frozen=True)
class Grid:
    instances: int
    threads: int
    delay_us: int
    preferred: tuple[int, ...]  # () = none

    def label(self) -> str:
        pref = "-".join(map(str, self.preferred)) or "none"
        return f"i{self.instances}-t{self.threads}-d{self.delay_us}-p{pref}"


def committed(repo: Path, model: str) -> Grid:
    cfg = load_config(repo / model / "configs" / "cpu.pbtxt")
    threads = (
        int(cfg.parameters["intra_op_thread_count"].string_value or 0)
        if "intra_op_thread_count" in cfg.parameters
        else 0
    )
    db = cfg.dynamic_batching
    return Grid(
        instances=sum(g.count or 1 for g in cfg.instance_group) or 1,
        threads=threads,
        delay_us=int(db.max_queue_delay_microseconds),
        preferred=tuple(db.preferred_batch_size),
    )


def _preferred(text: str) -> tuple[int, ...]:
    return () if text.strip().lower() in ("", "none") else tuple(int(v) for v in text.split(","))


def grid(instances, threads, delays, preferred, cores: int, oversubscribe: bool = False) -> list[Grid]:
    out = []
    for i, t, d, p in itertools.product(instances, threads, delays, preferred):
        if i * t > cores and not oversubscribe:
            continue
        out.append(Grid(i, t, d, _preferred(p)))
    return out


def edit_for(g: Grid):
    def edit(name, cfg) -> None:
        repos.cache_off(name, cfg)
        del cfg.instance_group[1:]
        cfg.instance_group[0].count = g.instances
        repos.set_parameter(cfg, "intra_op_thread_count", str(g.threads))
        cfg.dynamic_batching.max_queue_delay_microseconds = g.delay_us
        del cfg.dynamic_batching.preferred_batch_size[:]
        cfg.dynamic_batching.preferred_batch_size.extend(g.preferred)

    return edit


def frontier(points: list[dict]) -> list[dict]:
    """Pareto front: no other point has both lower p99 and higher throughput (sorted by p99)."""
    front, best = [], -1.0
    for p in sorted(points, key=lambda p: (p["p99_ms"], -p["throughput"])):
        if p["throughput"] > best:
            front.append(p)
            best = p["throughput"]
    return front


def measure(model: str, g: Grid, args, out_dir: Path, data: Path, key: str, tag: str) -> list[dict]:
    work = out_dir / "repos" / tag
    repo = repos.copy_repository(args.repo, work, models=[model], edit=edit_for(g))
    points = []
    with repos.serve(repo, out_dir / "servers" / tag) as server:
        urls = {"grpc": server.grpc_url, "http": server.http_url}
        first = analyzer.Point(model=model, label="warmup", concurrency=1, input_data=str(data))
        analyzer.warmup(first, urls, 16 if args.quick else 64)
        for c in args.concurrency:
            point = analyzer.Point(
                model=model, label=f"{model}.{tag}", concurrency=c, input_data=str(data), measurement=args.measurement
            )
            rec = analyzer.run_point(point, urls, out_dir / "runs" / model, key=key)
            f = analysis.flat(rec)
            points.append(
                {
                    "grid": asdict(g),
                    "tag": tag,
                    **{k: f[k] for k in ("concurrency", "throughput", "p50_ms", "p99_ms", "avg_batch", "stable")},
                }
            )
    shutil.rmtree(work, ignore_errors=True)
    return points


# ----------------------------------------------------------------------------------- --apply


def render_config(text: str, g: Grid, comment: str) -> str:
    """The cpu.pbtxt text with the grid point's values and a comment; everything else kept as written."""
    lines = [ln for ln in text.splitlines() if not ln.startswith("# perf-search")]
    text = "\n".join(lines) + "\n"
    text, n = re.subn(r"(instance_group \[\{ kind: KIND_CPU, count: )\d+( \}\])", rf"\g<1>{g.instances}\g<2>", text)
    if n != 1:
        raise ValueError("cannot find `instance_group [{ kind: KIND_CPU, count: N }]` on one line")
    text, n = re.subn(
        r'(parameters \{ key: "intra_op_thread_count", value: \{ string_value: ")\d+(" \} \})',
        rf"\g<1>{g.threads}\g<2>",
        text,
    )
    if n != 1:
        raise ValueError('cannot find the `parameters { key: "intra_op_thread_count", ... }` line')
    pref = f"  preferred_batch_size: [ {', '.join(map(str, g.preferred))} ]\n" if g.preferred else ""
    block = "".join(f"# perf-search: {c}\n" for c in comment.splitlines())
    block += f"dynamic_batching {{\n{pref}  max_queue_delay_microseconds: {g.delay_us}\n}}"
    text, n = re.subn(r"dynamic_batching \{\n.*?\n\}", lambda _: block, text, flags=re.S)
    if n != 1:
        raise ValueError("cannot find one `dynamic_batching { ... }` block")
    return text


def apply(repo: Path, model: str, g: Grid, comment: str) -> Path:
    path = repo / model / "configs" / "cpu.pbtxt"
    text = render_config(path.read_text(), g, comment)
    tmp = path.with_suffix(".pbtxt.tmp")
    tmp.write_text(text)
    try:
        cfg = load_config(tmp)
    except ValueError:
        tmp.unlink()
        raise
    db = cfg.dynamic_batching
    back = Grid(
        cfg.instance_group[0].count,
        int(cfg.parameters["intra_op_thread_count"].string_value),
        int(db.max_queue_delay_microseconds),
        tuple(db.preferred_batch_size),
    )
    if back != g:
        tmp.unlink()
        raise ValueError(f"{path}: the rewritten config reads back as {back}, not {g}")
    os.replace(tmp, path)
    from serving.repository import write_variants

    write_variants(repo, [model])  # cpu_fp32 / cpu_int8 follow their base config
    return path


# ----------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ints = lambda s: tuple(int(v) for v in s.split(","))  # noqa: E731
    p = argparse.ArgumentParser(prog="python -m perf.search", description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=spec.MODEL_REPOSITORY)
    p.add_argument("--artifacts", type=Path, default=spec.ARTIFACTS)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default {','.join(MODELS)})")
    p.add_argument("--budget-ms", type=float, default=analysis.BUDGET_MS, help="p99 budget (default %(default)s ms)")
    p.add_argument("--instances", type=ints, default=INSTANCES, help="instance counts, e.g. 1,2")
    p.add_argument("--threads", type=ints, default=THREADS, help="intra_op_thread_count values, e.g. 1,2")
    p.add_argument("--delays", type=ints, default=DELAYS_US, help="max_queue_delay_microseconds values")
    p.add_argument(
        "--preferred", default=";".join(PREFERRED), help='preferred batch sizes, ";"-separated sets, "none" for none'
    )
    p.add_argument("--concurrency", type=ints, default=CONCURRENCY, help="perf_analyzer concurrencies per point")
    p.add_argument("--oversubscribe", action="store_true", help="also try instances x threads > cores")
    p.add_argument("--quick", action="store_true", help="short measurement windows (tests)")
    p.add_argument("--apply", action="store_true", help="write each winner into <repo>/<model>/configs/cpu.pbtxt")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    for m in args.models:
        if m not in INPUT_KIND:
            p.error(f"--models: {m!r} is not a searchable model ({', '.join(INPUT_KIND)})")
        if not (spec.version_dir(m, args.repo) / spec.ONNX_FP32).is_file():
            p.error(f"{spec.version_dir(m, args.repo) / spec.ONNX_FP32} is missing: run `make export` first")
    if args.budget_ms <= 0:
        p.error("--budget-ms must be > 0")
    args.measurement = analyzer.Measurement(500, 50, 3) if args.quick else MEASUREMENT
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        pa_version = analyzer.version()
    except analyzer.AnalyzerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    cores = len(os.sched_getaffinity(0))
    preferred = args.preferred.split(";")
    points_grid = grid(args.instances, args.threads, args.delays, preferred, cores, args.oversubscribe)
    run_id = time.strftime("%Y%m%d-%H%M%S")
    out_dir = args.out / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    key = os.environ.setdefault("TRITON_ADMIN_KEY", secrets.token_urlsafe(24))
    command = "python -m perf.search " + " ".join(argv if argv is not None else sys.argv[1:])
    result: dict = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "budget_ms": args.budget_ms,
        "concurrency": list(args.concurrency),
        "cores": cores,
        "perf_analyzer": pa_version,
        "applied": args.apply,
        "models": {},
    }
    t0 = time.monotonic()
    for model in args.models:
        data = inputs.write(INPUT_KIND[model], args.artifacts, args.repo, out_dir / "inputs" / f"{model}.json", n=512)
        current = committed(args.repo, model)
        todo = [("committed", current)] + [(g.label(), g) for g in points_grid if g != current]
        pts: list[dict] = []
        for tag, g in todo:
            log.info("%s: %s", model, tag)
            got = measure(model, g, args, out_dir, data, key, tag)
            for p in got:
                p["committed"] = tag == "committed"
            pts += got
        ok = [p for p in pts if p["p99_ms"] is not None and p["p99_ms"] <= args.budget_ms]
        winner = max(ok, key=lambda p: p["throughput"]) if ok else None
        cur = [p for p in pts if p["committed"]]
        cur_ok = [p for p in cur if p["p99_ms"] <= args.budget_ms]
        entry = {
            "points": pts,
            "frontier": frontier(pts),
            "winner": winner,
            "current": max(cur_ok or cur, key=lambda p: p["throughput"]) if cur else None,
        }
        if winner and args.apply:
            g = Grid(**{**winner["grid"], "preferred": tuple(winner["grid"]["preferred"])})
            comment = (
                f"chosen by `{command}` on {result['date']} ({cores} cores): highest throughput with p99 <= "
                f"{args.budget_ms:g} ms among {len(pts)} measured points\n"
                f"{g.instances} instance(s) x {g.threads} thread(s), delay {g.delay_us} us, preferred "
                f"{list(g.preferred) or 'none'}: {winner['throughput']:.0f} infer/s, p99 {winner['p99_ms']:.2f} ms "
                f"at concurrency {winner['concurrency']} (perf_analyzer {pa_version}, gRPC)"
            )
            entry["applied_to"] = str(apply(args.repo, model, g, comment))
            log.info("%s: wrote %s into %s", model, g.label(), entry["applied_to"])
        result["models"][model] = entry
        if winner:
            print(
                f"{model}: winner {winner['tag']} at c{winner['concurrency']}: {winner['throughput']:.0f}/s, p99 {winner['p99_ms']:.2f} ms"
            )
        else:
            print(f"{model}: no grid point meets p99 <= {args.budget_ms:g} ms")
    result["seconds"] = round(time.monotonic() - t0, 1)
    shutil.rmtree(out_dir / "repos", ignore_errors=True)
    (out_dir / "search.json").write_text(json.dumps(result, indent=2) + "\n")
    latest = args.out / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_id)
    print(
        f"search: {out_dir / 'search.json'} ({result['seconds']:.0f} s){'' if args.apply else '; nothing applied (use --apply)'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
