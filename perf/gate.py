"""Regression gate: compare a run's ratios with the committed perf/baseline.json.

    python -m perf.gate                                   # perf/results/latest vs perf/baseline.json
    python -m perf.gate --run perf/results/<id> --tolerance 0.3
    python -m perf.gate --update                          # write the latest run's ratios as the new baseline

Only same-run ratios are compared (perf.goals.GATED and stream / windowed throughput), never absolute
times: a slower or busier machine moves them far less than it moves the times. All are "higher is better":
one fails when it falls below baseline x (1 - tolerance) or was not measured.
Exit status 0: no regression; 1: regression; 2: bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from models import spec

DEFAULT_BASELINE = spec.ROOT / "perf" / "baseline.json"
DEFAULT_RUN = spec.ROOT / "perf" / "results" / "latest"
DEFAULT_TOLERANCE = 0.35  # the 2-core machine is shared: a 35 % drop of a same-run ratio is a regression


def load_ratios(run: Path) -> tuple[dict[str, float], dict]:
    """Ratios of a run directory (its summary.json, recomputed if absent) or of a summary.json file."""
    run = Path(run)
    path = run if run.is_file() else run / "summary.json"
    if path.is_file():
        summary = json.loads(path.read_text())
    elif (run / "runs").is_dir():
        from perf import goals

        summary = goals.summarize(run)
    else:
        raise FileNotFoundError(f"{run} is neither a run directory nor a summary.json: run `make perf` first")
    return summary["ratios"], summary


def compare(baseline: dict, ratios: dict[str, float], tolerance: float | None = None) -> list[dict]:
    """One row per baseline ratio: name, baseline, value, floor, ok, why."""
    default = float(baseline.get("tolerance", DEFAULT_TOLERANCE)) if tolerance is None else tolerance
    per = baseline.get("tolerances", {}) if tolerance is None else {}
    rows = []
    for name, base in baseline["ratios"].items():
        tol = float(per.get(name, default))
        floor, value = base * (1.0 - tol), ratios.get(name)
        ok = value is not None and value >= floor
        why = (
            "not measured"
            if value is None
            else ""
            if ok
            else f"fell {100 * (1 - value / base):.0f} % (tolerance {100 * tol:.0f} %)"
        )
        rows.append({"name": name, "baseline": base, "value": value, "floor": floor, "ok": ok, "why": why})
    return rows


def baseline_from(summary: dict, tolerance: float) -> dict:
    run, mach = summary.get("run", {}), summary.get("machine", {})
    return {
        "about": "Ratios of one `make perf` run (same-run baselines, never absolute times); "
        "`python -m perf.gate` fails when a ratio falls by more than `tolerance`.",
        "tolerance": tolerance,
        "measured": {
            "run": run.get("id"),
            "command": run.get("command"),
            "quick": run.get("quick"),
            "machine": f"{mach.get('nproc')} cores, {mach.get('cpu_model')}",
            "written": time.strftime("%Y-%m-%d"),
        },
        "ratios": dict(sorted(summary["ratios"].items())),
    }


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.gate", description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE, help="committed ratios (perf/baseline.json)")
    p.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run directory or summary.json (default latest)")
    p.add_argument(
        "--tolerance", type=float, help=f"allowed relative drop (default: the baseline's, {DEFAULT_TOLERANCE})"
    )
    p.add_argument("--update", action="store_true", help="write the run's ratios as the baseline instead of comparing")
    args = p.parse_args(argv)
    if args.tolerance is not None and not 0 <= args.tolerance < 1:
        p.error("--tolerance must be in [0, 1)")
    try:
        ratios, summary = load_ratios(args.run)
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as exc:
        return _fail(str(exc))
    quick = summary.get("run", {}).get("quick")
    if args.update:
        if quick:
            return _fail("a --quick run is not a baseline: run `make perf` in full first")
        body = baseline_from(summary, DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance)
        args.baseline.write_text(json.dumps(body, indent=2) + "\n")
        print(f"wrote {len(body['ratios'])} ratios to {args.baseline}")
        return 0
    if not args.baseline.is_file():
        return _fail(f"no baseline {args.baseline}: write one with `python -m perf.gate --update`")
    mach = summary.get("machine", {})
    load, cores = (mach.get("loadavg") or [None])[0], mach.get("nproc")
    if load is not None and cores and load > cores:
        print(f"warning: the run started at load average {load:g} on {cores} cores: its ratios carry that noise")
    if quick:
        print("warning: a --quick run (short windows, fewer points) is compared with a full-run baseline")
    rows = compare(json.loads(args.baseline.read_text()), ratios, args.tolerance)
    width = max((len(r["name"]) for r in rows), default=10)
    for r in rows:
        value = "missing" if r["value"] is None else f"{r['value']:.3f}"
        state = "ok  " if r["ok"] else "FAIL"
        print(
            f"{state} {r['name']:{width}s} {value:>9s}  baseline {r['baseline']:.3f}  floor {r['floor']:.3f}  {r['why']}"
        )
    failed = sum(not r["ok"] for r in rows)
    print(f"perf gate: {len(rows) - failed}/{len(rows)} ratios within tolerance" + (" - REGRESSION" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
