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
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from models import spec  # noqa: E402
from perf import analysis  # noqa: E402

log = logging.getLogger("perf.report")

DEFAULT_RUN = spec.ROOT / "perf" / "results" / "latest"
DEFAULT_OUT = spec.ROOT / "perf"
STATE = {True: "**met**", False: "**missed**", None: "n/a"}


def _f(v, digits: int = 1, unit: str = "") -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}{unit}"


def _x(v) -> str:
    return "–" if v is None else f"{v:.2f}x"


# ----------------------------------------------------------------------------------- figures


def _plain_log_axes(ax, x: bool = True, y: bool = True) -> None:
    fmt = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}")
    for on, axis in ((x, ax.xaxis), (y, ax.yaxis)):
        if on:
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(fmt)
            axis.set_minor_formatter(NullFormatter())


def plot_model(name: str, m: dict, budget_ms: float, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(10, 5))
    sweep = m["sweep"]
    tp = [f["throughput"] for f in sweep]
    ax.plot(tp, [f["p99_ms"] for f in sweep], "o-", color="C0", label="Triton gRPC p99 (concurrency sweep)")
    ax.plot(tp, [f["p50_ms"] for f in sweep], "o--", color="C0", alpha=0.5, label="Triton gRPC p50")
    for f in sweep:
        ax.annotate(
            f"c{f['concurrency']}",
            (f["throughput"], f["p99_ms"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    if m.get("http"):
        ax.plot(
            [f["throughput"] for f in m["http"]], [f["p99_ms"] for f in m["http"]], "s", color="C2", label="HTTP p99"
        )
    if m.get("batching_off"):
        off = m["batching_off"]
        ax.plot(
            [f["throughput"] for f in off],
            [f["p99_ms"] for f in off],
            "x",
            ms=9,
            mew=2,
            color="C3",
            label="dynamic batching off, p99",
        )
        for f in off:
            ax.annotate(
                f"c{f['concurrency']} off",
                (f["throughput"], f["p99_ms"]),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=8,
                color="C3",
            )
    if m.get("rate"):
        ax.plot(
            [f["throughput"] for f in m["rate"]],
            [f["p99_ms"] for f in m["rate"]],
            "^",
            color="C4",
            label="request-rate (Poisson) p99",
        )
    if m.get("chosen"):
        c = m["chosen"]
        ax.plot(
            [c["throughput"]], [c["p99_ms"]], "*", ms=16, color="gold", mec="k", label=f"chosen: c{c['concurrency']}"
        )
    if m.get("knee"):
        k = m["knee"]
        ax.plot([k["throughput"]], [k["p99_ms"]], "D", ms=8, mfc="none", mec="k", label=f"knee: c{k['concurrency']}")
    ax.axhline(budget_ms, color="grey", ls=":", lw=1, label=f"p99 budget {budget_ms:g} ms")
    marks = []
    if m.get("eager"):
        marks.append((m["eager"]["throughput"], "PyTorch eager b1", "C1", "-"))
    ort = m.get("ort", {})
    if ort.get("fp32", {}).get("1"):
        marks.append((ort["fp32"]["1"]["throughput"], "ORT FP32 b1 in-process", "C5", "--"))
    b = str(m.get("served_batch"))
    if b != "1" and ort.get("fp32", {}).get(b):
        marks.append((ort["fp32"][b]["throughput"], f"ORT FP32 b{b} in-process", "C6", "--"))
    if ort.get("int8", {}).get(b):
        marks.append((ort["int8"][b]["throughput"], f"ORT INT8 b{b} in-process", "C7", "-."))
    for x, label, color, ls in marks:
        ax.axvline(x, color=color, ls=ls, lw=1.2, label=f"{label}: {x:,.0f}/s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_axes(ax)
    ax.set_xlabel("throughput (inferences/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{name}: latency vs throughput (in-process baselines as vertical lines)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_stream(stream: dict, path: Path) -> Path:
    pts = stream["points"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    xs = range(len(pts))
    labels = [f"{p['concurrency']} clients" for p in pts]
    a.bar([x - 0.2 for x in xs], [p["stream_ticks_per_s"] for p in pts], 0.4, label="reservoir_stream (ticks/s)")
    a.bar([x + 0.2 for x in xs], [p["window_per_s"] for p in pts], 0.4, label="reservoir windowed (forecasts/s)")
    a.set_xticks(list(xs), labels)
    a.set_yscale("log")
    _plain_log_axes(a, x=False)
    a.set_ylabel("answers per second")
    a.legend(fontsize=7)
    a.set_title("throughput per tick")
    b.bar([x - 0.2 for x in xs], [p["stream_p99_ms"] for p in pts], 0.4, label="stream p99")
    b.bar([x + 0.2 for x in xs], [p["window_p99_ms"] for p in pts], 0.4, label="windowed p99")
    b.set_xticks(list(xs), labels)
    b.set_yscale("log")
    _plain_log_axes(b, x=False)
    b.set_ylabel("p99 latency per tick (ms)")
    b.legend(fontsize=7)
    b.set_title("p99 per tick")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_goals(goals: list[dict], path: Path) -> Path:
    rows = [g for g in goals if g["value"] is not None]
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(rows), 2) + 1))
    for i, g in enumerate(rows):
        target = g["threshold"]
        norm = target / max(g["value"], 1e-9) if g["lower_is_better"] else g["value"] / target  # >= 1: meets it
        color = {True: "C2", False: "C3", None: "0.6"}[g["met"]]
        ax.barh(i, norm, color=color)
        ax.text(norm, i, f" {g['value']:.2f} (goal {g['target'].split(' at ')[0]})", va="center", fontsize=7)
    ax.axvline(1.0, color="k", lw=1)
    ax.set_yticks(range(len(rows)), [f"{g['model']}: {g['goal']}" for g in rows], fontsize=7)
    ax.set_xscale("log")
    _plain_log_axes(ax, y=False)
    ax.set_xlabel("measured / goal (>= 1 meets it; grey: goal not applicable)")
    ax.set_title("goals on this cpu target")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------- markdown


def _point_table(pts: list[dict], x: str = "concurrency") -> list[str]:
    head = (
        f"| {x} | batch | infer/s | p50 ms | p99 ms | avg server batch | queue ms | compute ms | "
        "network+send/recv ms | stable | load (1 min) |"
    )
    out = [head, "|" + "---|" * 11]
    for f in pts:
        b = f["breakdown_us"]
        comp = (b.get("compute_input", 0) + b.get("compute_infer", 0) + b.get("compute_output", 0)) / 1000
        xv = f["concurrency"] if x == "concurrency" else f["request_rate"]
        out.append(
            f"| {xv} | {f['batch_size']} | {_f(f['throughput'])} | {_f(f['p50_ms'], 2)} | {_f(f['p99_ms'], 2)} | "
            f"{_f(f['avg_batch'])} | {_f(b.get('queue', 0) / 1000, 2)} | {_f(comp, 2)} | {_f(b.get('network', 0) / 1000, 2)} | "
            f"{'yes' if f['stable'] else 'no'} | {_f(f.get('load'))} |"
        )
    return out


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
    c1, knee, peak, ch = m.get("c1"), m.get("knee"), m.get("peak"), m.get("chosen")
    out += ["| figure | value |", "|---|---|"]
    if c1:
        out.append(
            f"| concurrency 1: p50 / p99 | {_f(c1['p50_ms'], 2)} / {_f(c1['p99_ms'], 2)} ms at {_f(c1['throughput'])}/s |"
        )
    if knee:
        out.append(
            f"| knee (first concurrency at >= 90 % of peak): c{knee['concurrency']} | {_f(knee['throughput'])}/s, "
            f"p50 / p99 {_f(knee['p50_ms'], 2)} / {_f(knee['p99_ms'], 2)} ms, avg server batch {_f(knee['avg_batch'])} |"
        )
    if peak:
        out.append(
            f"| peak throughput | {_f(peak['throughput'])}/s at c{peak['concurrency']} (p99 {_f(peak['p99_ms'], 2)} ms) |"
        )
    out.append(
        f"| chosen point (highest throughput with p99 <= {budget:g} ms) | "
        + (
            f"c{ch['concurrency']}: {_f(ch['throughput'])}/s, p99 {_f(ch['p99_ms'], 2)} ms |"
            if ch
            else "none: no point meets the budget |"
        )
    )
    if m.get("eager"):
        e = m["eager"]
        out.append(
            f"| PyTorch eager, batch 1 loop | {_f(e['throughput'])}/s, p50 {_f(e['p50_ms'], 2)} ms ({e['threads']} threads) |"
        )
        out.append(
            f"| **served / eager** (chosen point; peak) | {_x(m.get('served_over_eager'))}; {_x(m.get('peak_over_eager'))} |"
        )
    if m.get("sentence_transformers"):
        st = m["sentence_transformers"]
        out.append(
            f"| in-process SentenceTransformer.encode, batch 1 | {_f(st['throughput'])}/s, p50 / p99 "
            f"{_f(st['p50_ms'], 2)} / {_f(st['p99_ms'], 2)} ms ({st['threads']} threads) |"
        )
        out.append(
            f"| **encode p50 / served c1 p50; served c16 / encode throughput** | "
            f"{_x(m.get('st_p50_over_served_c1_p50'))}; {_x(m.get('served_c16_over_st'))} |"
        )
    for h in m.get("http", []):
        g = analysis.at(m["sweep"], h["concurrency"])
        if g:
            out.append(f"| HTTP / gRPC throughput at c{h['concurrency']} | {_x(h['throughput'] / g['throughput'])} |")
    if m.get("dynbatch") is not None:
        out.append(
            f"| **dynamic batching on / off** at c{m['dynbatch_concurrency']} (throughput) | {_x(m['dynbatch'])} |"
        )
    if m.get("ort"):
        b, prec = m.get("served_batch"), m.get("served_precision", "fp32")
        same = m["ort"].get(prec, {}).get(str(b), {})
        out.append(
            f"| ONNX Runtime {prec.upper()} (the served file) in-process at the served batch ({b}) | "
            f"{_f(same.get('throughput'))}/s ({same.get('threads')} threads) |"
        )
        if m.get("c16_over_ort_b1") is not None:
            out.append(f"| **served at c16 / ORT FP32 batch-1 loop** | {_x(m['c16_over_ort_b1'])} |")
        out.append(
            f"| **served / in-process ORT at that batch** | {_f(100 * m['served_over_ort'] if m.get('served_over_ort') else None, 0, ' %')} |"
        )
        out.append(
            f"| **INT8 / FP32 latency** (in-process p50), batch 1; batch 64 | {_f(m.get('int8_latency_b1'), 2)}; {_f(m.get('int8_latency_b64'), 2)} |"
        )
    if m.get("int8_accuracy"):
        a = m["int8_accuracy"]
        out.append(
            f"| INT8 accuracy goal (calibration report) | {'met' if a['met'] else 'missed: ' + (a.get('reason') or '')} |"
        )
    out.append("")
    if m.get("ort"):
        out += [
            "In-process baselines (same input data):",
            "",
            "| what | batch | items/s | p50 ms | p99 ms |",
            "|---|---|---|---|---|",
        ]
        if m.get("eager"):
            e = m["eager"]
            out.append(f"| PyTorch eager | 1 | {_f(e['throughput'])} | {_f(e['p50_ms'], 2)} | {_f(e['p99_ms'], 2)} |")
        for p, per in m["ort"].items():
            for b, t in per.items():
                out.append(
                    f"| ORT {p.upper()} | {b} | {_f(t['throughput'])} | {_f(t['p50_ms'], 2)} | {_f(t['p99_ms'], 2)} |"
                )
        for b, pair in (m.get("int8_pairs") or {}).items():
            for p, t in pair.items():
                out.append(
                    f"| ORT {p.upper()}, alternating with the other | {b} | {_f(t['throughput'])} | "
                    f"{_f(t['p50_ms'], 2)} | {_f(t['p99_ms'], 2)} |"
                )
        out.append("")
    out += ["gRPC concurrency sweep:", ""] + _point_table(m["sweep"]) + [""]
    if m.get("compare"):
        cmp = m["compare"]
        out += [
            f"Against `configs/{cmp['config']}.pbtxt` on a second server, each point right after the committed one:",
            "",
            f"| concurrency | infer/s | infer/s ({cmp['config']}) | ratio | p50 / p99 ms | p50 / p99 ms ({cmp['config']}) |",
            "|---|---|---|---|---|---|",
        ]
        for r in cmp["points"]:
            out.append(
                f"| {r['concurrency']} | {_f(r['throughput'])} | {_f(r['other_throughput'])} | {_x(r['throughput_ratio'])} "
                f"| {_f(r['p50_ms'], 2)} / {_f(r['p99_ms'], 2)} | {_f(r['other_p50_ms'], 2)} / {_f(r['other_p99_ms'], 2)} |"
            )
        out.append("")
    for run, title, x in (
        ("http", "HTTP", "concurrency"),
        ("batch", "client-side batches (-b)", "concurrency"),
        ("rate", "request-rate sweep (Poisson arrivals, fractions of the sweep's peak)", "request rate"),
        ("batching_off", "dynamic batching off (second server, same configs without dynamic_batching)", "concurrency"),
        ("cached", "recommend_cached: response cache on, repeated test users", "concurrency"),
    ):
        if m.get(run):
            out += [f"{title}:", ""] + _point_table(m[run], x) + [""]
            if run == "cached":
                hits = sum(f.get("cache_hits", 0) for f in m[run])
                out += [f"Cache hits recorded by the server over these points: {hits:,}.", ""]
    return out


def _search_section(search: dict) -> list[str]:
    out = [
        "## Config search (Model Analyzer)",
        "",
        f"Command: `{search['command']}` ({search['date']}, {search['tool']}). Every variant was served by a real "
        f"tritonserver that Model Analyzer started; perf_analyzer measured it at concurrency "
        f"{', '.join(map(str, search['concurrency']))}. The winner is the highest throughput whose p99 <= "
        f"{search['budget_ms']:g} ms. Model Analyzer's own summary and detailed reports and plots are in the run's "
        "`ma/reports` and `ma/plots`.",
        "",
    ]
    for name, s in search["models"].items():
        out += [
            f"### {name}",
            "",
            "| variant | instances | intra-op threads | max queue delay µs | preferred batch | file | c | infer/s | p99 ms | within budget |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in s["points"]:
            g = p["settings"]
            mark = " (committed)" if p.get("committed") else ""
            out.append(
                f"| {p['variant']}{mark} | {g['instances']} | {g['threads']} | {g['delay_us']} | {g['preferred'] or '–'} | "
                f"{g['file']} | {p['concurrency']} | {_f(p['throughput'])} | {_f(p['p99_ms'], 2)} | "
                f"{'yes' if p['meets_budget'] else 'no'} |"
            )
        w = s.get("winner")
        out += [
            "",
            (
                f"Winner: {w['variant']} at c{w['concurrency']}: {_f(w['throughput'])}/s, p99 {_f(w['p99_ms'], 2)} ms"
                + (
                    " (applied to configs/cpu.pbtxt)."
                    if search.get("applied")
                    else " (not applied: APPLY=1 writes it)."
                )
            )
            if w
            else f"No variant meets p99 <= {search['budget_ms']:g} ms.",
            "",
        ]
    return out


def render(summary: dict, figures: dict[str, str], search: dict | None) -> str:
    run, mach, vers = summary["run"], summary["machine"], summary["versions"]
    end = summary.get("machine_end") or {}
    budget = summary["budget_ms"]
    size = "full" if run.get("n_items") == spec.N_ITEMS else f"small ({run.get('n_items')} catalog items)"
    out = [
        "# Performance report (cpu target)",
        "",
        f"Run `{run.get('id')}`{' (quick profile: short windows, two points per sweep)' if run.get('quick') else ''}, "
        f"{run.get('started')} – {run.get('finished')}; repository `{run.get('repo')}` at {size} size. "
        "The result is the ratios: every baseline was measured in the same run on the same machine with the same input data.",
        "",
        "## Machine, versions, commands",
        "",
        f"- machine: {mach.get('nproc')} cores ({mach.get('cpu_model')}), {mach.get('memory_gib')} GiB, kernel {mach.get('kernel')}; "
        f"load average {mach.get('loadavg')} at the start, {end.get('loadavg')} at the end (other work shares these cores)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items() if v),
        f"- measured with: `{run.get('command')}` (`make perf`), phases {run.get('phases_s')} s",
        "- this report and its figures: `make perf-report` (`python -m perf.report`); config search: `make perf-search`; "
        "regression gate: `make perf-gate` (`python -m perf.gate`)",
        "- perf_analyzer: one invocation per point, time windows with a stability check (`stable: no` marks a point "
        "whose last 3 windows never agreed within the stated percentage; it was measured again accepting any 3 windows); "
        "perf_analyzer runs on the same cores as the server",
        "- served models: a copy of the repository's cpu configs with the response cache off (every request computed); "
        "input data: real test-split windows, queries and user ids (perf/inputs.py)",
        "",
        "## Goals",
        "",
    ]
    if figures.get("goals"):
        out += [f"![goals]({figures['goals']})", ""]
    out += ["| model | goal | target | measured | result | reason (profile) |", "|---|---|---|---|---|---|"]
    for g in summary["goals"]:
        value = (
            "–" if g["value"] is None else (f"{100 * g['value']:.0f} %" if "%" in g["target"] else f"{g['value']:.2f}")
        )
        out.append(f"| {g['model']} | {g['goal']} | {g['target']} | {value} | {STATE[g['met']]} | {g['reason']} |")
    if summary.get("errors"):
        out += ["", f"{len(summary['errors'])} point(s) could not be measured:", ""]
        out += [f"- `{k}`: {v.splitlines()[-1][:300]}" for k, v in summary["errors"].items()]
    out += ["", "## Ratios watched by the regression gate", "", "| ratio | value |", "|---|---|"]
    out += [f"| {k} | {v:.3f} |" for k, v in summary["ratios"].items()]
    out += ["", "## Per model", ""]
    for name, m in summary["models"].items():
        if m.get("sweep"):
            out += _model_section(name, m, figures.get(name), budget, summary.get("configs", {}).get(name))
    stream = summary.get("stream")
    if stream:
        out += [
            "## Stateful stream vs windowed reservoir (same question per tick)",
            "",
            "reservoir_stream answers each new hourly tick from the state it keeps per sequence; the windowed "
            "reservoir answers the same question by re-running the last 168 ticks. Both async gRPC at the same number "
            "of concurrent clients (sequences).",
            "",
        ]
        if figures.get("stream"):
            out += [f"![stream vs windowed]({figures['stream']})", ""]
        out += [
            "| clients | stream ticks/s | windowed /s | throughput ratio | stream p99 ms | windowed p99 ms | stream avg batch | windowed avg batch |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in stream["points"]:
            out.append(
                f"| {p['concurrency']} | {_f(p['stream_ticks_per_s'])} | {_f(p['window_per_s'])} | {_x(p['throughput_ratio'])} | "
                f"{_f(p['stream_p99_ms'], 2)} | {_f(p['window_p99_ms'], 2)} | {_f(p['stream_avg_batch'])} | {_f(p['window_avg_batch'])} |"
            )
        out.append("")
    ex = summary.get("extras", {})
    out += ["## Shared memory", ""]
    nh = summary["models"].get("nhits", {})
    if nh.get("shm") and nh.get("noshm"):
        s, n = nh["shm"][0], nh["noshm"][0]
        out += [
            f"perf_analyzer, nhits, client batch {s['batch_size']} at concurrency {s['concurrency']}: system shared memory "
            f"{_f(s['throughput'])}/s (p99 {_f(s['p99_ms'], 2)} ms) vs plain gRPC {_f(n['throughput'])}/s (p99 {_f(n['p99_ms'], 2)} ms): "
            f"{_x(s['throughput'] / n['throughput'])}.",
            "",
        ]
    shm = ex.get("shm", {})
    if shm.get("models"):
        out += [
            "`clients.shm.compare` (plain vs shared-memory round trip, alternating calls; its inputs are the helper's own):",
            "",
            "| model | rows | input bytes | plain p50 ms | shm p50 ms | speed-up (p50) |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in shm["models"].items():
            out.append(
                f"| {name} | {r['rows']} | {r['input_bytes']:,} | {_f(r['plain_ms']['p50'], 2)} | {_f(r['shm_ms']['p50'], 2)} | {_x(r['speedup_p50'])} |"
            )
        out.append("")
    elif shm:
        out += [f"clients.shm.compare: {shm.get('skipped') or shm.get('error')}", ""]
    a = ex.get("assets_1000", {})
    out += ["## 1,000 assets", ""]
    if "p50_ms" in a:
        out += [
            f"{a['windows']} test-split windows (the data has fewer series than that, so several windows per asset) through "
            f"`{a['helper']}` ({a['options']}): p50 {_f(a['p50_ms'], 1)} ms, max {_f(a['max_ms'], 1)} ms over {a['runs']} runs; "
            f"goal {a['goal']}: {'met' if a['met'] else 'missed'}.",
            "",
        ]
    else:
        out += [f"not measured: {a.get('skipped') or a.get('error') or 'no record'}", ""]
    if search:
        out += _search_section(search)
    out += [
        "## How to read this",
        "",
        "- served / eager compares Triton's throughput at the chosen point with PyTorch called once per request in a Python loop "
        "(the seeds' CPU baseline); served / in-process ORT compares it with ONNX Runtime running the same ONNX at the batch the "
        "server formed (average batch = inference count / execution count from Triton's statistics during that point).",
        "- the knee is the first concurrency whose throughput reaches 90 % of the sweep's peak; past it, concurrency buys queueing.",
        "- absolute numbers move with the load on this shared machine; the ratios are what the gate compares.",
        "",
    ]
    return "\n".join(out)


def latest_search(run_dir: Path) -> dict | None:
    path = Path(run_dir).resolve().parent / "search" / "latest" / "search.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write(run_dir: Path, out_dir: Path = DEFAULT_OUT, search: dict | None = None) -> Path:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = (
        json.loads((run_dir / "env.json").read_text()).get("run", {}).get("budget_ms", analysis.BUDGET_MS)
        if (run_dir / "env.json").is_file()
        else analysis.BUDGET_MS
    )
    summary = analysis.summarize(run_dir, budget)
    search = search if search is not None else latest_search(run_dir)
    figures: dict[str, str] = {}
    for name, m in summary["models"].items():
        if m.get("sweep"):
            figures[name] = plot_model(name, m, budget, out_dir / f"latency_{name}.png").name
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
