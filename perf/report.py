"""perf/report.md and its PNG figures from a recorded run (and the config search, when there is one).

    python -m perf.report                                  # perf/results/latest -> perf/report.md, perf/*.png
    python -m perf.report --run perf/results/<id> --out /tmp/report

Every number comes from the run's files (summary.json is recomputed from the per-point JSON), so the
report can be rebuilt at any time without measuring again: `make perf-report`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from models import spec  # noqa: E402
from perf import goals  # noqa: E402
from perf.tables import num, table, times  # noqa: E402

log = logging.getLogger("perf.report")

DEFAULT_RUN = spec.ROOT / "perf" / "results" / "latest"
DEFAULT_OUT = spec.ROOT / "perf"
STATE = {True: "**met**", False: "**missed**", None: "n/a"}
STREAM_PANELS = {  # title: (y label, (key, legend) of the stream bar, (key, legend) of the windowed bar)
    "throughput per tick": (
        "answers per second",
        ("stream_ticks_per_s", "reservoir_stream (ticks/s)"),
        ("window_per_s", "reservoir windowed (forecasts/s)"),
    ),
    "p99 per tick": ("p99 latency per tick (ms)", ("stream_p99_ms", "stream p99"), ("window_p99_ms", "windowed p99")),
}
POINT_RUNS = {  # the point tables of a model's section beside its sweep: run -> (title, x)
    "http": ("HTTP", "concurrency"),
    "batch": ("client-side batches (-b)", "concurrency"),
    "rate": ("request-rate sweep (Poisson arrivals, fractions of the sweep's peak)", "request rate"),
    "batching_off": ("dynamic batching off (second server, same configs without dynamic_batching)", "concurrency"),
    "cached": ("recommend_cached: response cache on, repeated test users", "concurrency"),
}


# ----------------------------------------------------------------------------------- figures


@contextmanager
def figure(path: Path, figsize: tuple[float, float], ncols: int = 1):
    """The one figure helper: the axes of a new figure to draw on; on exit plain numbers on log axes, saved as PNG."""
    fig, axes = plt.subplots(1, ncols, figsize=figsize)
    try:
        yield axes
        for ax in axes if ncols > 1 else (axes,):
            fmt = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}")
            for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
                if scale == "log":
                    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                    axis.set_major_formatter(fmt)
                    axis.set_minor_formatter(NullFormatter())
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight")  # labels and notes outside the axes stay in the picture
    finally:
        plt.close(fig)


def _xy(pts: list[dict], y: str = "p99_ms") -> tuple[list, list]:
    return [f["throughput"] for f in pts], [f[y] for f in pts]


def _annotate(ax, pts: list[dict], suffix: str = "", dy: int = 4, **kw) -> None:
    for f in pts:
        xy = (f["throughput"], f["p99_ms"])
        ax.annotate(f"c{f['concurrency']}{suffix}", xy, textcoords="offset points", xytext=(4, dy), fontsize=8, **kw)


def plot_model(name: str, m: dict, budget_ms: float, path: Path) -> Path:
    with figure(path, (10, 5)) as ax:
        ax.plot(*_xy(m["sweep"]), "o-", color="C0", label="Triton gRPC p99 (concurrency sweep)")
        ax.plot(*_xy(m["sweep"], "p50_ms"), "o--", color="C0", alpha=0.5, label="Triton gRPC p50")
        _annotate(ax, m["sweep"])
        for run, fmt, style in (
            ("http", "s", {"color": "C2", "label": "HTTP p99"}),
            ("batching_off", "x", {"ms": 9, "mew": 2, "color": "C3", "label": "dynamic batching off, p99"}),
            ("rate", "^", {"color": "C4", "label": "request-rate (Poisson) p99"}),
        ):
            if m.get(run):
                ax.plot(*_xy(m[run]), fmt, **style)
        if m.get("batching_off"):
            _annotate(ax, m["batching_off"], " off", -10, color="C3")
        if c := m.get("chosen"):
            ax.plot(*_xy([c]), "*", ms=16, color="gold", mec="k", label=f"chosen: c{c['concurrency']}")
        ax.plot(*_xy([m["knee"]]), "D", ms=8, mfc="none", mec="k", label=f"knee: c{m['knee']['concurrency']}")
        ax.axhline(budget_ms, color="grey", ls=":", lw=1, label=f"p99 budget {budget_ms:g} ms")
        fp32, int8, b = m.get("ort", {}).get("fp32", {}), m.get("ort", {}).get("int8", {}), str(m.get("served_batch"))
        marks = [(m.get("eager"), "PyTorch eager b1", "C1", "-"), (fp32.get("1"), "ORT FP32 b1 in-process", "C5", "--")]
        marks += [(b != "1" and fp32.get(b), f"ORT FP32 b{b} in-process", "C6", "--")]
        marks += [(int8.get(b), f"ORT INT8 b{b} in-process", "C7", "-.")]
        marks += [(m.get("st_topk"), "SentenceTransformer.encode + top-k, 1 text per call", "C1", "-")]
        marks += [(m.get("encoder_loop"), "FP32 ONNX encoder + top-k, 1 text per call", "C5", "--")]
        marks += [(m.get("sentence_transformers"), "SentenceTransformer.encode, 1 text per call", "C8", ":")]
        for t, label, color, ls in (mark for mark in marks if mark[0]):
            ax.axvline(t["throughput"], color=color, ls=ls, lw=1.2, label=f"{label}: {t['throughput']:,.0f}/s")
        ax.set(xscale="log", yscale="log", xlabel="throughput (inferences/s)", ylabel="latency (ms)")
        ax.set_title(f"{name}: latency vs throughput (in-process baselines as vertical lines)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return path


def plot_stream(stream: dict, path: Path) -> Path:
    pts, xs = stream["points"], range(len(stream["points"]))
    with figure(path, (9, 3.8), ncols=2) as axes:
        for ax, (title, (ylabel, *bars)) in zip(axes, STREAM_PANELS.items(), strict=True):
            for dx, (key, label) in zip((-0.2, 0.2), bars, strict=True):
                ax.bar([x + dx for x in xs], [p[key] for p in pts], 0.4, label=label)
            ax.set_xticks(list(xs), [f"{p['concurrency']} clients" for p in pts])
            ax.set(yscale="log", ylabel=ylabel, title=title)
            ax.legend(fontsize=7)
    return path


def plot_goals(judged: list[dict], path: Path) -> Path:
    rows = [g for g in judged if g["value"] is not None]
    with figure(path, (8, 0.45 * max(len(rows), 2) + 1)) as ax:
        for i, g in enumerate(rows):
            target = g["threshold"]
            norm = target / max(g["value"], 1e-9) if g["lower_is_better"] else g["value"] / target  # >= 1: meets it
            ax.barh(i, norm, color={True: "C2", False: "C3", None: "0.6"}[g["met"]])
            ax.text(norm, i, f" {g['value']:.2f} (goal {g['target'].split(' at ')[0]})", va="center", fontsize=7)
        ax.axvline(1.0, color="k", lw=1)
        labels = [textwrap.fill(f"{g['model']}: {g['goal']}", 44) for g in rows]
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.set(xscale="log", xlabel="measured / goal (>= 1 meets it; grey: goal not applicable)")
        ax.set_xlim(right=ax.get_xlim()[1] * 6)  # room for the value notes right of the longest bar
        ax.set_title("goals on this cpu target")
    return path


# ----------------------------------------------------------------------------------- markdown


def lat(f: dict, a: str = "p50_ms", b: str = "p99_ms") -> str:
    return f"{num(f[a], 2)} / {num(f[b], 2)}"


def point_table(pts: list[dict], x: str = "concurrency") -> list[str]:
    head = [x, "batch", "infer/s", "p50 ms", "p99 ms", "avg server batch", "queue ms", "compute ms"]
    rows = []
    for f in pts:
        b, y = f["breakdown_us"], f["concurrency"] if x == "concurrency" else f["request_rate"]
        rows.append([y, f["batch_size"], num(f["throughput"]), num(f["p50_ms"], 2), num(f["p99_ms"], 2)])
        rows[-1] += [num(f["avg_batch"]), num(b.get("queue", 0) / 1000, 2), num(goals.compute_us(b) / 1000, 2)]
        rows[-1] += [num(b.get("network", 0) / 1000, 2), "yes" if f["stable"] else "no", num(f.get("load"))]
    return table([*head, "network+send/recv ms", "stable", "load (1 min)"], rows)


def parts_table(pts: list[dict]) -> list[str]:
    """Each composing model's avg batch, queue per request and compute per execution / per request (ms)."""
    head = ["concurrency", "model", "avg batch", "queue ms / request", "compute ms / execution", "compute ms / request"]
    rows = (
        [f["concurrency"], name, num(p["avg_batch"]), num(p["queue_ms"], 2)]
        + [num(p["compute_ms_per_execution"], 2), num(p["compute_ms_per_request"], 2)]
        for f in pts
        for name, p in (f.get("parts") or {}).items()
    )
    return table(head, rows)


def _figures(m: dict, budget: float) -> dict[str, str]:
    """The figure -> value rows of a model's section."""
    c1, knee, peak, ch = m["c1"], m["knee"], m["peak"], m.get("chosen")
    rows = {"concurrency 1: p50 / p99": f"{lat(c1)} ms at {num(c1['throughput'])}/s"}
    value = f"{num(knee['throughput'])}/s, p50 / p99 {lat(knee)} ms, avg server batch {num(knee['avg_batch'])}"
    rows[f"knee (first concurrency at >= 90 % of peak): c{knee['concurrency']}"] = value
    rows["peak throughput"] = f"{num(peak['throughput'])}/s at c{peak['concurrency']} (p99 {num(peak['p99_ms'], 2)} ms)"
    value = f"c{ch['concurrency']}: {num(ch['throughput'])}/s, p99 {num(ch['p99_ms'], 2)} ms" if ch else ""
    rows[f"chosen point (highest throughput with p99 <= {budget:g} ms)"] = value or "none: no point meets the budget"
    if e := m.get("eager"):
        value = f"{num(e['throughput'])}/s, p50 {num(e['p50_ms'], 2)} ms ({e['threads']} threads)"
        rows["PyTorch eager, batch 1 loop"] = value
        rows["**served / eager** (chosen point; peak)"] = (
            f"{times(m.get('served_over_eager'))}; {times(m.get('peak_over_eager'))}"
        )
    for key, what in (("st_topk", "SentenceTransformer.encode + top-k"), ("encoder_loop", "FP32 ONNX encoder + top-k")):
        if t := m.get(key):
            value = f"{num(t['throughput'])}/s, p50 / p99 {lat(t)} ms ({t['threads']} threads)"
            rows[f"in-process {what}, one text per call"] = value
            value = f"{times(m.get(f'served_over_{key}'))}; {times(m.get(f'peak_over_{key}'))}"
            rows[f"**served / {what}** (chosen point; peak)"] = value
    if st := m.get("sentence_transformers"):
        value = f"{num(st['throughput'])}/s, p50 / p99 {lat(st)} ms ({st['threads']} threads)"
        rows["in-process SentenceTransformer.encode, batch 1"] = value
        value = f"{times(m.get('st_p50_over_served_c1_p50'))}; {times(m.get('served_c16_over_st'))}"
        rows["**encode p50 / served c1 p50; served c16 / encode throughput**"] = value
    for h in m.get("http", []):
        if g := goals.at(m["sweep"], h["concurrency"]):
            rows[f"HTTP / gRPC throughput at c{h['concurrency']}"] = times(h["throughput"] / g["throughput"])
    if m.get("dynbatch") is not None:
        rows[f"**dynamic batching on / off** at c{m['dynbatch_concurrency']} (throughput)"] = times(m["dynbatch"])
    if m.get("ort"):
        b, prec = m.get("served_batch"), m.get("served_precision", "fp32")
        same = m["ort"].get(prec, {}).get(str(b), {})
        what = f"ONNX Runtime {prec.upper()} (the served file) in-process at the served batch ({b})"
        rows[what] = f"{num(same.get('throughput'))}/s ({same.get('threads')} threads)"
        if m.get("c16_over_ort_b1") is not None:
            rows["**served at c16 / ORT FP32 batch-1 loop**"] = times(m["c16_over_ort_b1"])
        served = 100 * m["served_over_ort"] if m.get("served_over_ort") else None
        rows["**served / in-process ORT at that batch**"] = num(served, 0, " %")
        value = f"{num(m.get('int8_latency_b1'), 2)}; {num(m.get('int8_latency_b64'), 2)}"
        rows["**INT8 / FP32 latency** (in-process p50), batch 1; batch 64"] = value
    if a := m.get("int8_accuracy"):
        rows["INT8 accuracy goal (calibration report)"] = "met" if a["met"] else "missed: " + (a.get("reason") or "")
    return rows


def _model_section(name: str, m: dict, fig: str | None, budget: float, config: dict | None = None) -> list[str]:
    out = [f"### {name}", ""]
    if config:
        out += [
            f"Served with the committed `configs/cpu.pbtxt`: {config['instances']} instance(s) x {config['threads']} "
            f"intra-op thread(s), max queue delay {config['delay_us']} µs, preferred batch sizes "
            f"{config['preferred'] or 'none'}, `{config.get('file', 'model.onnx')}` (response cache off for the measurement).",
            "",
        ]
    if fig:
        out += [f"![{name}: latency vs throughput]({fig})", ""]
    out += table(["figure", "value"], _figures(m, budget).items()) + [""]
    if m.get("ort"):
        timing = lambda t: [num(t["throughput"]), num(t["p50_ms"], 2), num(t["p99_ms"], 2)]  # noqa: E731
        rows = [["PyTorch eager", 1, *timing(m["eager"])]] if m.get("eager") else []
        rows += [[f"ORT {p.upper()}", b, *timing(t)] for p, per in m["ort"].items() for b, t in per.items()]
        pairs = [(b, p, t) for b, pair in (m.get("int8_pairs") or {}).items() for p, t in pair.items()]
        rows += [[f"ORT {p.upper()}, alternating with the other", b, *timing(t)] for b, p, t in pairs]
        out += ["In-process baselines (same input data):", ""]
        out += table(["what", "batch", "items/s", "p50 ms", "p99 ms"], rows) + [""]
    out += ["gRPC concurrency sweep:", ""] + point_table(m["sweep"]) + [""]
    if any(f.get("parts") for f in m["sweep"]):
        out += ["Per model of the ensemble, from Triton's statistics over each point of the sweep:", ""]
        out += parts_table(m["sweep"]) + [""]
    if cmp := m.get("compare"):
        c = cmp["config"]
        out += [f"Against `configs/{c}.pbtxt` on a second server, each point right after the committed one:", ""]
        head = ["concurrency", "infer/s", f"infer/s ({c})", "ratio", "p50 / p99 ms", f"p50 / p99 ms ({c})"]
        rows = (
            [r["concurrency"], num(r["throughput"]), num(r["other_throughput"]), times(r["throughput_ratio"])]
            + [lat(r), lat(r, "other_p50_ms", "other_p99_ms")]
            for r in cmp["points"]
        )
        out += table(head, rows) + [""]
    for run, (title, x) in POINT_RUNS.items():
        if m.get(run):
            out += [f"{title}:", ""] + point_table(m[run], x) + [""]
    if m.get("cached"):
        hits = sum(f.get("cache_hits", 0) for f in m["cached"])
        out += [f"Cache hits recorded by the server over these points: {hits:,}.", ""]
    return out


def _search_section(search: dict) -> list[str]:
    out = ["## Config search (Model Analyzer)", ""]
    out += [
        f"Command: `{search['command']}` ({search['date']}, {search['tool']}). Every variant was served by a real "
        f"tritonserver that Model Analyzer started; perf_analyzer measured it at concurrency "
        f"{', '.join(map(str, search['concurrency']))}. The winner is the highest throughput whose p99 <= "
        f"{search['budget_ms']:g} ms. Model Analyzer's own summary and detailed reports and plots are in the run's "
        "`ma/reports` and `ma/plots`.",
        "",
    ]
    head = ["variant", "instances", "intra-op threads", "max queue delay µs", "preferred batch", "file", "c"]
    for name, s in search["models"].items():
        rows = [
            [p["variant"] + (" (committed)" if p.get("committed") else ""), g["instances"], g["threads"], g["delay_us"]]
            + [g["preferred"] or "–", g["file"], p["concurrency"], num(p["throughput"]), num(p["p99_ms"], 2)]
            + ["yes" if p["meets_budget"] else "no"]
            for p in s["points"]
            for g in (p["settings"],)
        ]
        out += [f"### {name}", "", *table([*head, "infer/s", "p99 ms", "within budget"], rows), ""]
        if w := s.get("winner"):
            where = f"{w['variant']} at c{w['concurrency']}: {num(w['throughput'])}/s, p99 {num(w['p99_ms'], 2)} ms"
            applied = "applied to configs/cpu.pbtxt" if search.get("applied") else "not applied: APPLY=1 writes it"
            out += [f"Winner: {where} ({applied}).", ""]
        else:
            out += [f"No variant meets p99 <= {search['budget_ms']:g} ms.", ""]
    return out


def _trading(summary: dict) -> list[str]:
    """Priority lanes under a flood and one sequence's tick (perf/trading.py, perf_analyzer's lone runs)."""
    out = []
    for name, m in summary["models"].items():
        lanes = m.get("lanes") or {}
        if not lanes.get("lanes"):
            continue
        if not out:
            out += ["## Priority lanes: a critical client beside a flood", ""]
        crit, flood = lanes["critical"], lanes["flood"]
        out += [
            f"`{name}`: one `clients.Client` at priority {crit['priority']} (deadline {crit['deadline_ms']:g} ms, "
            f"concurrency 1) for {lanes['seconds']:g} s alone, then beside perf_analyzer at concurrency "
            f"{flood['concurrency']} in the default lane; on the committed configs and on a server of the same "
            "configs without priority lanes.",
            "",
        ]
        rows = []
        for server in ("lanes", "no_lanes"):
            r = lanes.get(server) or {}
            for when in ("alone", "flooded"):
                f = r.get(when) or {}
                rows.append(
                    [server.replace("_", " "), when, f.get("n", 0), lat(f) if f.get("n") else "–"]
                    + [
                        num(f.get("max_ms"), 2),
                        ", ".join(f"{k} {v}" for k, v in (f.get("refused") or {}).items()) or "0",
                    ]
                    + [num(f.get("flood_throughput")), num(f.get("avg_batch"))]
                )
            rows[-1].append(times(r.get("p99_ratio")))
            rows[-2].append("")
        head = ["server", "critical client", "answered", "p50 / p99 ms", "max ms", "refused", "flood /s", "avg batch"]
        out += [*table([*head, "p99 flooded / alone"], rows), ""]
    sm = summary["models"].get("reservoir_stream") or {}
    if sm.get("lone") or sm.get("stream_client"):
        out += ["## One sequence's tick", ""]
        rows = [
            [
                f"perf_analyzer, {'one gRPC stream' if run == 'lone_streaming' else 'unary gRPC'}",
                lat(f),
                num(f["throughput"]),
            ]
            for run, f in sm.get("lone", {}).items()
        ]
        rows += [
            [f"clients.stream.StreamClient, {'one gRPC stream' if mode == 'stream' else 'unary gRPC'}", lat(c), "–"]
            for mode, c in (sm.get("stream_client") or {}).items()
            if isinstance(c, dict) and c.get("n")
        ]
        out += [*table(["client", "p50 / p99 ms", "ticks/s"], rows), ""]
    return out


def _extras(summary: dict) -> list[str]:
    """The shared-memory and 1,000-asset sections."""
    ex, nh, out = summary.get("extras", {}), summary["models"].get("nhits", {}), ["## Shared memory", ""]
    if nh.get("shm") and nh.get("noshm"):
        s, n = nh["shm"][0], nh["noshm"][0]
        out += [
            f"perf_analyzer, nhits, client batch {s['batch_size']} at concurrency {s['concurrency']}: system shared "
            f"memory {num(s['throughput'])}/s (p99 {num(s['p99_ms'], 2)} ms) vs plain gRPC {num(n['throughput'])}/s "
            f"(p99 {num(n['p99_ms'], 2)} ms): {times(s['throughput'] / n['throughput'])}.",
            "",
        ]
    shm = ex.get("shm", {})
    if shm.get("models"):
        out += [
            "`clients.shm.compare` (plain vs shared-memory round trip, alternating calls; its inputs are the helper's own):",
            "",
        ]
        head = ["model", "rows", "input bytes", "plain p50 ms", "shm p50 ms", "speed-up (p50)"]
        rows = (
            [name, r["rows"], f"{r['input_bytes']:,}", num(r["plain_ms"]["p50"], 2), num(r["shm_ms"]["p50"], 2)]
            + [times(r["speedup_p50"])]
            for name, r in shm["models"].items()
        )
        out += [*table(head, rows), ""]
    elif shm:
        out += [f"clients.shm.compare: {shm.get('skipped') or shm.get('error')}", ""]
    out += ["## 1,000 assets", ""]
    if "p50_ms" in (a := ex.get("assets_1000", {})):
        out += [
            f"{a['windows']} test-split windows (the data has fewer series than that, so several windows per asset) "
            f"through `{a['helper']}` ({a['options']}): p50 {num(a['p50_ms'], 1)} ms, max {num(a['max_ms'], 1)} ms "
            f"over {a['runs']} runs; goal {a['goal']}: {'met' if a['met'] else 'missed'}.",
            "",
        ]
    else:
        out += [f"not measured: {a.get('skipped') or a.get('error') or 'no record'}", ""]
    return out


HEADER = """\
# Performance report (cpu target)

Run `{run[id]}`{quick}, {run[started]} – {run[finished]}; repository `{run[repo]}` at {size} size. \
The result is the ratios: every baseline was measured in the same run on the same machine with the same input data.

## Machine, versions, commands

- machine: {mach[nproc]} cores ({mach[cpu_model]}), {mach[memory_gib]} GiB, kernel {mach[kernel]}; \
load average {mach[loadavg]} at the start, {end[loadavg]} at the end (other work shares these cores)
- versions: {versions}
- measured with: `{run[command]}` (`make perf`), phases {run[phases_s]} s
- this report and its figures: `make perf-report` (`python -m perf.report`); config search: `make perf-search`; \
regression gate: `make perf-gate` (`python -m perf.gate`)
- perf_analyzer: one invocation per point, time windows with a stability check (`stable: no` marks a point \
whose last 3 windows never agreed within the stated percentage; it was measured again accepting any 3 windows); \
perf_analyzer runs on the same cores as the server
- served models: a copy of the repository's cpu configs with the response cache off (every request computed); \
input data: real test-split windows, queries and user ids (perf/inputs.py)

## Goals
"""
STREAM = """\
## Stateful stream vs windowed reservoir (same question per tick)

reservoir_stream answers each new hourly tick from the state it keeps per sequence; the windowed reservoir answers \
the same question by re-running the last 168 ticks. Both async gRPC at the same number of concurrent clients (sequences).
"""
HOW_TO_READ = """\
## How to read this

- served / eager compares Triton's throughput at the chosen point with PyTorch called once per request in a Python \
loop (the seeds' CPU baseline); served / in-process ORT compares it with ONNX Runtime running the same ONNX at the \
batch the server formed (average batch = inference count / execution count from Triton's statistics during that point).
- the knee is the first concurrency whose throughput reaches 90 % of the sweep's peak; past it, concurrency buys queueing.
- absolute numbers move with the load on this shared machine; the ratios are what the gate compares.
"""


def render(summary: dict, figures: dict[str, str], search: dict | None) -> str:
    run = defaultdict(lambda: None, summary["run"])
    size = "full" if run["n_items"] == spec.N_ITEMS else f"small ({run['n_items']} catalog items)"
    out = HEADER.format(
        run=run,
        quick=" (quick profile: short windows, two points per sweep)" if run["quick"] else "",
        size=size,
        mach=defaultdict(lambda: None, summary["machine"]),
        end=defaultdict(lambda: None, summary.get("machine_end") or {}),
        versions=", ".join(f"{k} {v}" for k, v in summary["versions"].items() if v),
    ).split("\n")
    if figures.get("goals"):
        out += [f"![goals]({figures['goals']})", ""]
    rows = []
    for g in summary["goals"]:
        v = g["value"]
        value = "–" if v is None else (f"{100 * v:.0f} %" if "%" in g["target"] else f"{v:.2f}")
        rows.append([g["model"], g["goal"], g["target"], value, STATE[g["met"]], g["reason"]])
    out += table(["model", "goal", "target", "measured", "result", "reason (profile)"], rows)
    if errors := summary.get("errors"):
        out += ["", f"{len(errors)} point(s) could not be measured:", ""]
        out += [f"- `{k}`: {v.splitlines()[-1][:300]}" for k, v in errors.items()]
    out += ["", "## Ratios watched by the regression gate", ""]
    out += table(["ratio", "value"], ([k, f"{v:.3f}"] for k, v in summary["ratios"].items()))
    out += ["", "## Per model", ""]
    budget, configs = summary["budget_ms"], summary.get("configs", {})
    for name, m in summary["models"].items():
        if m.get("sweep"):
            out += _model_section(name, m, figures.get(name), budget, configs.get(name))
    if stream := summary.get("stream"):
        out += STREAM.split("\n")
        if figures.get("stream"):
            out += [f"![stream vs windowed]({figures['stream']})", ""]
        head = ["clients", "stream ticks/s", "windowed /s", "throughput ratio", "stream p99 ms", "windowed p99 ms"]
        rows = (
            [p["concurrency"], num(p["stream_ticks_per_s"]), num(p["window_per_s"]), times(p["throughput_ratio"])]
            + [num(p["stream_p99_ms"], 2), num(p["window_p99_ms"], 2)]
            + [num(p["stream_avg_batch"]), num(p["window_avg_batch"])]
            for p in stream["points"]
        )
        out += [*table([*head, "stream avg batch", "windowed avg batch"], rows), ""]
    out += _trading(summary) + _extras(summary) + (_search_section(search) if search else [])
    return "\n".join(out) + "\n" + HOW_TO_READ


def latest_search(run_dir: Path) -> dict | None:
    return goals.read_json(Path(run_dir).resolve().parent / "search" / "latest" / "search.json")


def write(run_dir: Path, out_dir: Path = DEFAULT_OUT, search: dict | None = None) -> Path:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = goals.read_json(run_dir / "env.json", {}).get("run", {}).get("budget_ms", goals.BUDGET_MS)
    summary = goals.summarize(run_dir, budget)
    search = search if search is not None else latest_search(run_dir)
    figures = {
        name: plot_model(name, m, budget, out_dir / f"latency_{name}.png").name
        for name, m in summary["models"].items()
        if m.get("sweep")
    }
    if summary.get("stream") and summary["stream"]["points"]:
        figures["stream"] = plot_stream(summary["stream"], out_dir / "stream_vs_windowed.png").name
    if any(g["value"] is not None for g in summary["goals"]):
        figures["goals"] = plot_goals(summary["goals"], out_dir / "goals.png").name
    path = out_dir / "report.md"
    path.write_text(render(summary, figures, search))
    log.info("report %s with %d figures", path, len(figures))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=DEFAULT_RUN, help="a run directory (default perf/results/latest)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where report.md and the PNGs go (default perf/)")
    p.add_argument("--search", type=Path, help="a config-search search.json (default: perf/results/search/latest)")
    args = p.parse_args(argv)
    if not (args.run / "runs").is_dir():
        p.error(f"{args.run} holds no recorded run: `make perf` first")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    search = json.loads(args.search.read_text()) if args.search else None
    print(write(args.run, args.out, search))
    return 0


if __name__ == "__main__":
    sys.exit(main())
