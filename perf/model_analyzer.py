"""`make perf-search`: Triton Model Analyzer searches the cpu configs under a p99 budget; `--apply` writes the winners.

    python -m perf.model_analyzer --models nhits,similarity            # profile, change nothing
    python -m perf.model_analyzer --models nhits --apply               # ... and write the winner into configs/cpu.pbtxt

`model-analyzer profile` (its own virtualenv `.venv-ma`, perf/model-analyzer.txt says why) in local launch mode
starts the wheel's tritonserver with this project's backends over a copy of the repository whose config.pbtxt is
each model's committed configs/cpu.pbtxt (cache off), every model `cpu_only`, and measures every combination of
perf/search.yaml with perf_analyzer on real input data at each concurrency: throughput under p99 <= the budget.
perf/results/search/<id>/ holds Model Analyzer's config, results, reports and variant configs (`ma/`) and
`search.json` (every measured point, the winners); `latest` points at the newest run.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from common.triton import load_config
from models import spec
from perf import goals, inputs, perf_analyzer

log = logging.getLogger("perf.model_analyzer")

DEFAULT_OUT = spec.ROOT / "perf" / "results" / "search"
SPACE = Path(__file__).resolve().parent / "search.yaml"
MA_VENV = Path(os.environ.get("MA_VENV", spec.ROOT / ".venv-ma")).resolve()
RESULTS_CSV = "metrics-model-inference.csv"
COMMENT = "# perf-search: "


def read_space(path: Path = SPACE) -> dict:
    """The search space, each model's entry completed from `defaults`."""
    space = yaml.safe_load(path.read_text())
    space["models"] = {name: {**space.get("defaults", {}), **m} for name, m in space["models"].items()}
    for name, m in space["models"].items():
        missing = {"input", "instances", "intra_op_threads", "max_queue_delay_us", "files"} - set(m)
        if missing:
            raise ValueError(f"{path}: model {name} lacks {sorted(missing)}")
    return space


def model_config_parameters(m: dict) -> dict:
    """perf/search.yaml's lists as Model Analyzer's manual search space (every combination is one variant)."""
    batching: dict = {"max_queue_delay_microseconds": list(m["max_queue_delay_us"])}
    if m.get("preferred_batch_size"):
        batching["preferred_batch_size"] = [list(p) for p in m["preferred_batch_size"]]
    return {
        "instance_group": [[{"kind": "KIND_CPU", "count": int(n)}] for n in m["instances"]],
        "parameters": {"intra_op_thread_count": {"string_value": [str(t) for t in m["intra_op_threads"]]}},
        "dynamic_batching": batching,
        "default_model_filename": list(m["files"]),
    }


def input_repository(repo: Path, dst: Path, models: list[str]) -> Path:
    """Each model's committed cpu config as its config.pbtxt (what Model Analyzer varies), cache off, files linked."""
    from perf.servers import copy_repository

    copy_repository(repo, dst, models, edit=lambda _name, cfg: cfg.ClearField("response_cache"))
    for name in models:
        (dst / name / "configs" / "cpu.pbtxt").replace(dst / name / "config.pbtxt")
        (dst / name / "configs").rmdir()
    return dst


def ma_config(args, space: dict, work: Path, data: dict[str, Path], ports: list[int]) -> dict:
    """The YAML Model Analyzer reads: local launch of our tritonserver, our backends, perf_analyzer of our venv."""
    from serving.server import assemble_backends, pytriton_dir, server_env

    env = server_env()
    cudart = perf_analyzer.cuda_runtime_dir()  # perf_analyzer 2.51 links libcudart.so.12; MA hands it this environment
    library_path = os.pathsep.join(p for p in (str(cudart or ""), env["LD_LIBRARY_PATH"]) if p)
    loopback = {f"{kind}_address": "127.0.0.1" for kind in ("http", "grpc", "metrics")}
    return {
        "model_repository": str(work / "input_repository"),
        "output_model_repository_path": str(work / "ma" / "output_repository"),
        "override_output_model_repository": True,
        "export_path": str(work / "ma"),
        "checkpoint_directory": str(work / "ma" / "checkpoints"),
        "triton_launch_mode": "local",
        "triton_server_path": str(pytriton_dir() / "bin" / "tritonserver"),
        "triton_http_endpoint": f"127.0.0.1:{ports[0]}",
        "triton_grpc_endpoint": f"127.0.0.1:{ports[1]}",
        "triton_metrics_url": f"http://127.0.0.1:{ports[2]}/metrics",
        "triton_server_flags": {"backend_directory": str(assemble_backends(work / "run").resolve()), **loopback},
        "triton_server_environment": {"LD_LIBRARY_PATH": library_path, "PATH": env["PATH"]},
        "triton_output_path": str(work / "ma" / "tritonserver.log"),
        "perf_analyzer_path": str(Path(sys.executable).parent / "perf_analyzer"),
        "perf_output": True,
        "perf_output_path": str(work / "ma" / "perf_analyzer.log"),
        "run_config_search_mode": "brute",
        "latency_budget": args.budget_ms,
        "objectives": ["perf_throughput"],
        "client_protocol": "grpc",
        "profile_models": {
            name: {
                "cpu_only": True,
                "model_config_parameters": model_config_parameters(space["models"][name]),
                "parameters": {"concurrency": list(args.concurrency), "batch_sizes": [1]},
                "perf_analyzer_flags": {
                    "input-data": str(data[name]),
                    "measurement-mode": "time_windows",
                    "measurement-interval": int(space.get("measurement_interval_ms", 1500)),
                },
            }
            for name in args.models
        },
    }


def read_results(work: Path) -> list[dict]:
    """Model Analyzer's inference results, one row per variant x concurrency, with each variant's settings."""
    path = work / "ma" / "results" / RESULTS_CSV
    if not path.is_file():
        raise RuntimeError(f"Model Analyzer wrote no {path}: see {work / 'ma.log'}")
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            variant = r["Model Config Path"]
            cfg = load_config(work / "ma" / "output_repository" / variant / "config.pbtxt")
            rows.append(
                {
                    "model": r["Model"],
                    "variant": variant,
                    "settings": settings(cfg),
                    "concurrency": int(r["Concurrency"]),
                    "throughput": float(r["Throughput (infer/sec)"]),
                    "p99_ms": float(r["p99 Latency (ms)"]),
                    "meets_budget": r["Satisfies Constraints"].strip().lower() == "yes",
                    "committed": variant.endswith("_config_default"),
                }
            )
    return rows


def settings(cfg) -> dict:
    """The searched fields of a config."""
    db = cfg.dynamic_batching
    threads = cfg.parameters["intra_op_thread_count"].string_value if "intra_op_thread_count" in cfg.parameters else ""
    return {
        "instances": sum(g.count or 1 for g in cfg.instance_group) or 1,
        "threads": int(threads or 0),
        "delay_us": int(db.max_queue_delay_microseconds),
        "preferred": list(db.preferred_batch_size),
        "file": cfg.default_model_filename or spec.ONNX_FP32,
    }


# Throughputs within this fraction of the best are a tie on this machine (repeated points differ by more);
# among them the winner is the config a lone request pays least for: the shortest queue delay, then the fewest
# instances x threads. (Without it, 100 us of delay won forecast_blend by 2 infer/s of 7,224 at c16 and
# halved its concurrency-1 throughput in the next `make perf`.)
TIE = 0.03


def winner(rows: list[dict]) -> dict | None:
    ok = [r for r in rows if r["meets_budget"]]
    if not ok:
        return None
    best = max(r["throughput"] for r in ok)
    close = [r for r in ok if r["throughput"] >= (1 - TIE) * best]
    return min(close, key=_lone_request_cost)


def _lone_request_cost(r: dict) -> tuple:
    s = r["settings"]
    return s["delay_us"], s["instances"] * s["threads"], -r["throughput"]


def render_config(text: str, s: dict, comment: str) -> str:
    """The committed cpu.pbtxt text with the winner's settings and a comment; everything else as written."""
    lines = [ln for ln in text.splitlines() if not ln.startswith(COMMENT)]
    text = "\n".join(lines) + "\n"
    edits = (
        (r"(instance_group \[\{ kind: KIND_CPU, count: )\d+( \}\])", rf"\g<1>{s['instances']}\g<2>"),
        (
            r'(parameters \{ key: "intra_op_thread_count", value: \{ string_value: ")\d+(" \} \})',
            rf"\g<1>{s['threads']}\g<2>",
        ),
        (r'^default_model_filename: "[^"]*"', f'default_model_filename: "{s["file"]}"'),
    )
    for pattern, repl in edits:
        text, n = re.subn(pattern, repl, text, flags=re.M)
        if n != 1:
            raise ValueError(f"cannot find one line matching {pattern!r} in the config")
    pref = f"  preferred_batch_size: [ {', '.join(map(str, s['preferred']))} ]\n" if s["preferred"] else ""
    head = "".join(f"{COMMENT}{c}\n" for c in comment.splitlines())
    searched = re.compile(r"\s*(preferred_batch_size|max_queue_delay_microseconds):")

    def block(m: re.Match) -> str:  # the searched fields replaced, the rest (priority lanes) kept as written
        rest = "".join(f"{ln}\n" for ln in m.group(1).split("\n") if ln.strip() and not searched.match(ln))
        return f"{head}dynamic_batching {{\n{pref}  max_queue_delay_microseconds: {s['delay_us']}\n{rest}}}"

    text, n = re.subn(r"(?:^# [^\n]*\n)*dynamic_batching \{\n(.*?)\n\}", block, text, flags=re.S | re.M)
    if n != 1:
        raise ValueError("cannot find one `dynamic_batching { ... }` block")
    return text


def apply(repo: Path, model: str, s: dict, comment: str) -> Path:
    """Write `s` into <repo>/<model>/configs/cpu.pbtxt (checked by reading it back), then its variants."""
    from repository.layout import write_variants

    path = repo / model / "configs" / "cpu.pbtxt"
    tmp = path.with_suffix(".pbtxt.tmp")
    tmp.write_text(render_config(path.read_text(), s, comment))
    try:
        if (back := settings(load_config(tmp))) != s:
            raise ValueError(f"{path}: the rewritten config reads back as {back}, not {s}")
    except ValueError:
        tmp.unlink()
        raise
    os.replace(tmp, path)
    write_variants(repo, [model])
    return path


def winner_comment(run_id: str, result: dict, entry: dict) -> str:
    w = entry["winner"]
    return (
        f"chosen by Model Analyzer, run {run_id} (`make perf-search APPLY=1`, {result['cores']} cores): highest "
        f"throughput with p99 <= {result['budget_ms']:g} ms of {len(entry['points'])} measured points (within "
        f"{TIE:.0%}: the shortest delay):\n"
        f"{w['throughput']:.0f} infer/s, p99 {w['p99_ms']:.2f} ms at concurrency {w['concurrency']} (gRPC)"
    )


def apply_winners(repo: Path, run_id: str, result: dict) -> None:
    for model, entry in result["models"].items():
        if entry["winner"]:
            path = apply(repo, model, entry["winner"]["settings"], winner_comment(run_id, result, entry))
            entry["applied_to"] = str(path)
            print(f"{model}: {describe(entry['winner']['settings'])} -> {path}")


def describe(s: dict) -> str:
    pref = ",".join(map(str, s["preferred"])) or "none"
    return f"{s['instances']} instance(s) x {s['threads']} thread(s), delay {s['delay_us']} us, preferred {pref}, {s['file']}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--space", type=Path, default=SPACE)
    space = read_space(pre.parse_known_args(argv)[0].space)
    p = argparse.ArgumentParser(prog="python -m perf.model_analyzer", description=__doc__.split("\n\n")[0])
    p.add_argument("--space", type=Path, default=SPACE, help="search space YAML (default perf/search.yaml)")
    p.add_argument("--repo", type=Path, default=spec.MODEL_REPOSITORY)
    p.add_argument("--artifacts", type=Path, default=spec.ARTIFACTS)
    p.add_argument("--models", default=",".join(space["models"]), help="comma-separated models of perf/search.yaml")
    p.add_argument("--budget-ms", type=float, default=goals.BUDGET_MS, help="p99 budget (default %(default)s ms)")
    p.add_argument("--concurrency", default=",".join(map(str, space["concurrency"])), help="e.g. 1,4,16")
    p.add_argument("--apply", action="store_true", help="write each winner into <repo>/<model>/configs/cpu.pbtxt")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--apply-run", type=Path, metavar="RUN", help="apply the winners of a finished run, measure nothing")
    args = p.parse_args(argv)
    args.space = space
    if args.apply_run is not None:
        if not (args.apply_run / "search.json").is_file():
            p.error(f"{args.apply_run / 'search.json'} does not exist")
        return args
    args.models = [m for m in args.models.split(",") if m]
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    for m in args.models:
        if m not in space["models"]:
            p.error(f"--models: {m!r} is not in perf/search.yaml ({', '.join(space['models'])})")
        for f in space["models"][m]["files"]:
            if not (spec.version_dir(m, args.repo) / f).is_file():
                p.error(f"{spec.version_dir(m, args.repo) / f} is missing: run `make export` first")
    if args.budget_ms <= 0 or not args.concurrency:
        p.error("--budget-ms must be > 0 and --concurrency name at least one value")
    if not (MA_VENV / "bin" / "model-analyzer").is_file():
        p.error(f"Model Analyzer is not installed in {MA_VENV}: run `make perf-search` (it creates that virtualenv)")
    return args


def main(argv: list[str] | None = None) -> int:
    from serving.server import free_port

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.apply_run is not None:
        result = json.loads((args.apply_run / "search.json").read_text())
        for entry in result["models"].values():
            entry["winner"] = winner(entry["points"])  # the rule of this code, on that run's points
        apply_winners(args.repo, args.apply_run.name, result)
        return 0
    run_id = time.strftime("%Y%m%d-%H%M%S")
    work = (args.out / run_id).resolve()
    work.mkdir(parents=True)
    command = "python -m perf.model_analyzer " + " ".join(argv if argv is not None else sys.argv[1:])
    input_repository(args.repo, work / "input_repository", args.models)
    data = {
        m: inputs.write(args.space["models"][m]["input"], args.artifacts, args.repo, work / "inputs" / f"{m}.json")
        for m in args.models
    }
    config = ma_config(args, args.space, work, data, [free_port(), free_port(), free_port()])
    (work / "ma").mkdir()
    (work / "ma" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = perf_analyzer.environment()
    cmd = [str(MA_VENV / "bin" / "model-analyzer"), "profile", "-f", str(work / "ma" / "config.yaml")]
    log.info("%s (log %s)", " ".join(cmd), work / "ma.log")
    t0 = time.monotonic()
    with open(work / "ma.log", "wb") as logfile:
        code = subprocess.run(cmd, stdout=logfile, stderr=subprocess.STDOUT, env=env, cwd=work).returncode
    if code != 0:
        tail = (work / "ma.log").read_text(errors="replace").splitlines()[-15:]
        print(f"error: model-analyzer exited {code}; last lines of {work / 'ma.log'}:", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)
        return 1
    rows = read_results(work)
    result: dict = {
        "command": command,
        "tool": "Triton Model Analyzer 1.58.0, brute search, local launch, cpu_only (perf/search.yaml)",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "budget_ms": args.budget_ms,
        "concurrency": args.concurrency,
        "cores": len(os.sched_getaffinity(0)),
        "seconds": round(time.monotonic() - t0, 1),
        "applied": args.apply,
        "models": {},
    }
    for model in args.models:
        mine = [r for r in rows if r["model"] == model]
        best = winner(mine)
        committed = winner([r for r in mine if r["committed"]])
        entry = {"points": mine, "winner": best, "committed": committed}
        if best is None:
            print(f"{model}: no variant meets p99 <= {args.budget_ms:g} ms ({len(mine)} points measured)")
        else:
            print(
                f"{model}: {describe(best['settings'])}: {best['throughput']:.0f}/s at c{best['concurrency']}, "
                f"p99 {best['p99_ms']:.2f} ms"
            )
        result["models"][model] = entry
    if args.apply:
        apply_winners(args.repo, run_id, result)
    (work / "search.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(work / "input_repository", ignore_errors=True)  # links only
    latest = args.out / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_id)
    print(f"search: {work / 'search.json'}; Model Analyzer's reports: {work / 'ma' / 'reports'}")
    if not args.apply:
        print("nothing applied (APPLY=1 / --apply writes the winners into configs/cpu.pbtxt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
