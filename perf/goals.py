"""From a recorded run to figures: knee, chosen point, ratios and the goals of perf/goals.yaml.

`summarize` reads what a run wrote (runs/<scenario>/*.json, baselines.json, extras.json, env.json)
and returns the dict that perf.run stores as summary.json, perf.report renders and perf.gate compares.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

GOALS_FILE = Path(__file__).resolve().parent / "goals.yaml"
_G = yaml.safe_load(GOALS_FILE.read_text())
BUDGET_MS: float = _G["budget_ms"]
KNEE_FRACTION: float = _G["knee_fraction"]
DYNBATCH_CONCURRENCY: int = _G["dynbatch_concurrency"]
COMPARE_AT: int = _G["compare_at"]
INT8_BATCH: int = _G["int8_batch"]
GOALS: dict[str, dict[str, float]] = _G["goals"]
GATED: tuple[str, ...] = tuple(_G["gated"])
RUNS = ("http", "batch", "rate", "shm", "noshm", "cached", "batching_off")  # beside <model>.sweep


def read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.is_file() else default


def load_records(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(run_dir) / "runs").rglob("*.json"))]


def load_errors(run_dir: Path) -> dict[str, str]:
    """Points perf_analyzer could not measure: {stem: message}."""
    d = Path(run_dir) / "errors"
    return {p.stem: p.read_text().strip() for p in sorted(d.glob("*.txt"))} if d.is_dir() else {}


def flat(rec: dict) -> dict:
    """One measured point as a flat dict: x, throughput, latencies, avg server batch, profile."""
    p, row = rec["point"], rec["row"]
    server = rec.get("server", {}).get(p["model"], {})
    return {
        **{k: p.get(k) for k in ("model", "label", "protocol", "concurrency", "request_rate")},
        "batch_size": p.get("batch_size", 1),
        "shared_memory": p.get("shared_memory", "none"),
        "throughput": row["throughput"],
        **{k: row.get(k) for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "avg_ms")},
        "breakdown_us": row.get("breakdown_us", {}),
        "avg_batch": server.get("avg_batch"),
        "exec_ms": server["compute_infer_ns"] / server["success_count"] / 1e6 if server.get("success_count") else None,
        "cache_hits": server.get("cache_hits", 0),
        "stable": rec.get("stable", True),
        "load": rec.get("loadavg_1min"),
        "composing": {m: s.get("avg_batch") for m, s in rec.get("server", {}).items() if m != p["model"]},
        "parts": {m: part_stats(s) for m, s in rec.get("server", {}).items() if m != p["model"]},
    }


def part_stats(s: dict) -> dict:
    """One composing model's share of a point, from Triton's statistics (deltas over the point): avg batch,
    queue per request, compute (input + infer + output) per execution and per request, in ms."""
    n, execs = s.get("success_count") or 0, s.get("execution_count") or 0
    compute = sum(s.get(k, 0) for k in ("compute_input_ns", "compute_infer_ns", "compute_output_ns"))
    return {
        "avg_batch": s.get("avg_batch"),
        "requests": n,
        "queue_ms": s.get("queue_ns", 0) / n / 1e6 if n else None,
        "compute_ms_per_execution": compute / execs / 1e6 if execs else None,
        "compute_ms_per_request": compute / n / 1e6 if n else None,
    }


def series(records: list[dict], label: str) -> list[dict]:
    pts = [flat(r) for r in records if r["point"]["label"] == label]
    return sorted(pts, key=lambda f: (f["batch_size"], f["concurrency"] or 0, f["request_rate"] or 0))


def knee(sweep: list[dict]) -> dict | None:
    peak = max((f["throughput"] for f in sweep), default=None)
    return next(f for f in sweep if f["throughput"] >= KNEE_FRACTION * peak) if sweep else None


def chosen(sweep: list[dict], budget_ms: float) -> dict | None:
    """Highest throughput whose p99 is within the budget."""
    ok = [f for f in sweep if f["p99_ms"] is not None and f["p99_ms"] <= budget_ms]
    return max(ok, key=lambda f: f["throughput"]) if ok else None


def at(sweep: list[dict], concurrency: int) -> dict | None:
    return next((f for f in sweep if f["concurrency"] == concurrency), None)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _get(f: dict | None, key: str = "throughput") -> float | None:
    return (f or {}).get(key)


def compute_us(b: dict) -> float:
    return b.get("compute_input", 0) + b.get("compute_infer", 0) + b.get("compute_output", 0)


def _parts(b: dict) -> dict[str, float]:
    return {
        "queue": b.get("queue", 0),
        "compute": compute_us(b),
        "network+server send/recv": b.get("network", 0),
        "client": b.get("client_send", 0) + b.get("client_recv", 0),
    }


def profile(f: dict | None) -> str:
    """Where the average request's time goes, from perf_analyzer's client/server breakdown."""
    if not f:
        return "not measured"
    parts = _parts(f["breakdown_us"])
    total = sum(parts.values()) or 1.0
    text = ", ".join(f"{k} {v / 1000:.2f} ms ({100 * v / total:.0f} %)" for k, v in parts.items())
    batch = f" ; avg server batch {f['avg_batch']:.1f}" if f.get("avg_batch") else ""
    return f"avg {total / 1000:.2f} ms = {text}{batch}"


BOTTLENECK = {
    "queue": "requests wait in Triton's queue for the model instance: the instance's executions already use the cores",
    "compute": "the model execution itself (ONNX Runtime in Triton's onnxruntime backend) dominates",
    "transport": "gRPC/HTTP transfer and Triton's request handling dominate, not the model",
}


def bottleneck(f: dict | None) -> str:
    if not f:
        return ""
    q, c, net, client = _parts(f["breakdown_us"]).values()
    parts = {"queue": q, "compute": c, "transport": net + client}
    return BOTTLENECK[max(parts, key=parts.get)]


def compare_summary(sweep: list[dict], other: list[dict], config: str) -> dict:
    """The committed configs' sweep against the --compare config's, concurrency by concurrency."""
    rows = []
    for f in sweep:
        if (g := at(other, f["concurrency"])) is not None and f["batch_size"] == g["batch_size"]:
            rows.append({"concurrency": f["concurrency"], "throughput_ratio": ratio(f["throughput"], g["throughput"])})
            rows[-1] |= {
                f"{o}{k}": p[k] for k in ("throughput", "p50_ms", "p99_ms") for o, p in (("", f), ("other_", g))
            }
    return {"config": config, "points": rows, "sweep": other}


def stream_summary(records: list[dict], scenario: str = "reservoir_stream") -> dict | None:
    stream, window = series(records, f"{scenario}.stream"), series(records, f"{scenario}.windowed")
    if not stream or not window:
        return None
    rows = []
    for s in stream:
        if w := at(window, s["concurrency"]):
            rows.append({"concurrency": s["concurrency"], "stream_ticks_per_s": s["throughput"]})
            rows[-1] |= {"window_per_s": w["throughput"], "throughput_ratio": s["throughput"] / w["throughput"]}
            rows[-1] |= {f"{n}_{k}": p[k] for k in ("p99_ms", "avg_batch") for n, p in (("stream", s), ("window", w))}
            rows[-1]["p99_ratio"] = ratio(s["p99_ms"], w["p99_ms"])
    return {"points": rows, "stream": stream, "window": window}


def model_summary(
    name: str, records: list[dict], baselines: dict, budget_ms: float, compare: str | None = None
) -> dict:
    sweep = series(records, f"{name}.sweep")
    out: dict = {"sweep": sweep}
    if other := series(records, f"{name}.sweep@{compare}") if compare else []:
        out["compare"] = compare_summary(sweep, other, compare)
    out.update({run: pts for run in RUNS if (pts := series(records, f"{name}.{run}"))})
    if not sweep:
        return out
    peak, c16 = max(sweep, key=lambda f: f["throughput"]), at(sweep, DYNBATCH_CONCURRENCY)
    out.update({"c1": at(sweep, 1) or sweep[0], "knee": knee(sweep), "peak": peak, "chosen": chosen(sweep, budget_ms)})
    # DYNBATCH_CONCURRENCY when both sides measured it, else the largest concurrency both measured
    if common := {f["concurrency"] for f in sweep} & {f["concurrency"] for f in out.get("batching_off", [])}:
        c = out["dynbatch_concurrency"] = DYNBATCH_CONCURRENCY if DYNBATCH_CONCURRENCY in common else max(common)
        out["dynbatch"] = ratio(at(sweep, c)["throughput"], at(out["batching_off"], c)["throughput"])
    b = baselines.get(name, {})
    if eager := b.get("eager"):
        out["eager"] = eager
        out["peak_over_eager"] = ratio(peak["throughput"], eager["throughput"])
        out["served_over_eager"] = ratio(_get(out["chosen"]), eager["throughput"])
    if ortb := b.get("ort", {}):
        out["ort"], out["served_precision"] = ortb, b.get("served_precision", "fp32")
        out["served_batch"] = b.get("served_batch")
        same = ortb.get(out["served_precision"], {}).get(str(b.get("served_batch")))
        out["served_over_ort"] = ratio((out["chosen"] or peak)["throughput"], _get(same))
        out["c16_over_ort_b1"] = ratio(_get(c16), _get(ortb.get("fp32", {}).get("1")))
        # INT8 vs FP32 from the alternating (paired) measurement where there is one, else the two sweeps
        pairs = b.get("int8_paired") or {
            str(k): {p: ortb.get(p, {}).get(str(k)) for p in ("fp32", "int8")} for k in (1, INT8_BATCH)
        }
        out["int8_paired"] = bool(b.get("int8_paired"))
        if b.get("int8_paired"):
            out["int8_pairs"] = b["int8_paired"]
        p50 = {
            (k, p): _get(pairs.get(k, {}).get(p), "p50_ms") for k in ("1", str(INT8_BATCH)) for p in ("fp32", "int8")
        }
        out["int8_latency_b64"] = ratio(p50[str(INT8_BATCH), "int8"], p50[str(INT8_BATCH), "fp32"])
        out["int8_speedup_b64"] = ratio(p50[str(INT8_BATCH), "fp32"], p50[str(INT8_BATCH), "int8"])
        out["int8_latency_b1"] = ratio(p50["1", "int8"], p50["1", "fp32"])
    for key in ("st_topk", "encoder_loop"):  # the text search against in-process searches of one text per call
        if t := b.get(key):
            out[key] = t
            out[f"served_over_{key}"] = ratio(_get(out["chosen"]), t["throughput"])
            out[f"peak_over_{key}"] = ratio(peak["throughput"], t["throughput"])
    if st := b.get("sentence_transformers"):  # the text search against SentenceTransformer.encode at batch 1
        out["sentence_transformers"] = st
        out["st_p50_over_served_c1_p50"] = ratio(st["p50_ms"], out["c1"]["p50_ms"])
        out["served_c16_over_st"] = ratio(_get(c16), st["throughput"])
    out |= {key: b[key] for key in ("int8_accuracy", "op_profile") if b.get(key) is not None}
    return out


# ----------------------------------------------------------------------------------- goals
# One check per kind of perf/goals.yaml: (model summary, threshold, budget, load note) ->
# (value, met, reason), or None when the run did not measure it.
CHECKS: dict[str, tuple] = {}
LOWER_IS_BETTER = {"int8_latency", "c1_p99", "tick_p99_ms", "lanes_p99_ratio"}


def _goal(goal: str, target: str):
    """Register a check under its kind, with its goal and target (format fields: k, pct, budget, cfg)."""

    def register(check):
        CHECKS[check.__name__.lstrip("_")] = (goal, target, check)
        return check

    return register


def _fmt(v: float | None, unit: str = "x") -> str:
    return "n/a" if v is None else f"{v:.2f}{unit}"


@_goal("served / PyTorch eager", ">= {k:g}x, p99 <= {budget:g} ms")
def _served_over_eager(m: dict, k: float, budget_ms: float, busy: str) -> tuple | None:
    if "eager" not in m:
        return None
    eager, c = m["eager"], m.get("chosen")
    if c is None:
        best = min(m["sweep"], key=lambda f: f["p99_ms"])
        reason = (
            f"no concurrency of the sweep keeps p99 <= {budget_ms:g} ms (lowest p99 {best['p99_ms']:.1f} ms at "
            f"concurrency {best['concurrency']}: {profile(best)}); {bottleneck(best)}. At any latency the peak is "
            f"{m['peak']['throughput']:.0f}/s = {_fmt(m.get('peak_over_eager'))} eager.{busy}"
        )
        return None, False, reason
    v = m["served_over_eager"]
    reason = (
        f"{c['throughput']:.0f}/s at concurrency {c['concurrency']} (p99 {c['p99_ms']:.1f} ms) vs eager "
        f"{eager['throughput']:.0f}/s (batch 1, p50 {eager['p50_ms']:.2f} ms). Profile: {profile(c)}"
    )
    return v, v >= k, reason + (f"; {bottleneck(c)}.{busy}" if v < k else "")


@_goal("dynamic batching on / off", f">= {{k:g}}x at c{DYNBATCH_CONCURRENCY}")
def _dynbatch(m: dict, k: float, budget_ms: float, busy: str) -> tuple | None:
    if (v := m.get("dynbatch")) is None:
        return None
    c = m.get("dynbatch_concurrency", DYNBATCH_CONCURRENCY)
    on, off = at(m.get("sweep", []), c), at(m.get("batching_off", []), c)
    per_row_on = on["exec_ms"] / on["avg_batch"] if on.get("exec_ms") and on.get("avg_batch") else None
    per_row_off = off.get("exec_ms") or None
    reason = (
        f"at c{c}: on {on['throughput']:.0f}/s, avg batch {on['avg_batch'] or 0:.1f}; off: {off['throughput']:.0f}/s. "
        f"Server execution per row: {_fmt(per_row_off, ' ms')} at batch 1 vs {_fmt(per_row_on, ' ms')} batched"
    )
    if per_row_on and per_row_off:
        reason += f" ({per_row_off / per_row_on:.1f}x cheaper per row)"
        if v < min(per_row_off / per_row_on, k):
            reason += (
                "; throughput rose less than per-row compute fell: per-request costs that batching does not "
                "share (gRPC, Triton's per-request tensors, perf_analyzer's own client on the same cores) bound it"
            )
    if v < k:
        reason += (
            "; batching can only help as much as a batched execution is cheaper per row than batch 1"
            f" (off-server profile: {profile(off)}).{busy}"
        )
    if c != DYNBATCH_CONCURRENCY:
        reason = f"measured at c{c} only, not c{DYNBATCH_CONCURRENCY} (quick profile): {reason}"
    return v, v >= k if c == DYNBATCH_CONCURRENCY else None, reason.rstrip(".") + "."


@_goal("served / in-process ORT, same batch", ">= {pct:.0f} %")
def _served_over_ort(m: dict, k: float, budget_ms: float, busy: str) -> tuple | None:
    if (v := m.get("served_over_ort")) is None:
        return None
    ref = m.get("chosen") or m["peak"]
    same = m["ort"][m["served_precision"]][str(m["served_batch"])]
    reason = (
        f"served {ref['throughput']:.0f}/s at concurrency {ref['concurrency']} (avg server batch "
        f"{ref['avg_batch'] or 0:.1f}) vs ONNX Runtime in-process {same['throughput']:.0f}/s at batch "
        f"{m['served_batch']} ({same['threads']} threads, the served {m['served_precision'].upper()} file). "
        f"Profile: {profile(ref)}"
    )
    if v < k:
        reason += f"; {bottleneck(ref)}, and perf_analyzer's client runs on the same cores.{busy}"
    return v, v >= k, reason


@_goal(f"served at c{DYNBATCH_CONCURRENCY} / in-process ORT batch-1 loop (model.onnx)", ">= {k:g}x")
def _c16_over_ort_b1(m: dict, k: float, budget_ms: float, busy: str) -> tuple | None:
    if (v := m.get("c16_over_ort_b1")) is None:
        return None
    c16, b1 = at(m["sweep"], DYNBATCH_CONCURRENCY), m["ort"]["fp32"]["1"]
    reason = (
        f"served {c16['throughput']:.0f}/s at concurrency {DYNBATCH_CONCURRENCY} (p99 {c16['p99_ms']:.1f} ms, "
        f"avg server batch {c16['avg_batch'] or 0:.1f}) vs {b1['throughput']:.0f}/s for one query at a time "
        f"through model.onnx in this process ({b1['threads']} threads)"
    )
    return v, v >= k, reason


@_goal("throughput at concurrency 1 (gRPC)", ">= {k:,.0f}/s")
def _c1_throughput(m: dict, k: float, budget_ms: float, busy: str) -> tuple | None:
    if (c1 := at(m.get("sweep", []), 1)) is None:
        return None
    reason = f"p50 {c1['p50_ms']:.2f} ms, p99 {c1['p99_ms']:.2f} ms per request. Profile: {profile(c1)}"
    return c1["throughput"], c1["throughput"] >= k, reason


@_goal("p99 at concurrency 1 (gRPC)", "<= {k:g} ms")
def _c1_p99(m: dict, k: float, budget_ms: float, busy: str) -> tuple | None:
    if (c1 := at(m.get("sweep", []), 1)) is None:
        return None
    reason = f"{c1['throughput']:.0f}/s, p50 {c1['p50_ms']:.2f} ms. Profile: {profile(c1)}; per model: {parts_text(c1)}"
    return c1["p99_ms"], c1["p99_ms"] <= k, reason + (busy if c1["p99_ms"] > k else "")


@_goal("throughput at the best point with p99 <= {budget:g} ms", ">= {k:,.0f}/s")
def _budget_throughput(m: dict, k: float, budget_ms: float, busy: str) -> tuple | None:
    if not m.get("sweep"):
        return None
    if (c := m.get("chosen")) is None:
        best = min(m["sweep"], key=lambda f: f["p99_ms"])
        return (
            None,
            False,
            f"no point keeps p99 <= {budget_ms:g} ms (lowest {best['p99_ms']:.1f} ms at c{best['concurrency']})",
        )
    reason = f"c{c['concurrency']}: p99 {c['p99_ms']:.1f} ms. Profile: {profile(c)}; per model: {parts_text(c)}"
    return c["throughput"], c["throughput"] >= k, reason + (busy if c["throughput"] < k else "")


@_goal(f"avg batch of the batched step at c{DYNBATCH_CONCURRENCY}", ">= {k:g}")
def _c16_avg_batch(m: dict, k: float, budget_ms: float, busy: str) -> tuple | None:
    if (c := at(m.get("sweep", []), DYNBATCH_CONCURRENCY)) is None:
        return None
    parts = {n: v for n, v in c.get("composing", {}).items() if v}
    if not parts:
        return None
    name, value = max(parts.items(), key=lambda kv: kv[1])
    return value, value >= k, f"{name} (Triton's statistics, inferences / executions); per model: {parts_text(c)}"


@_goal("served (best point under the budget) / SentenceTransformer.encode + top-k loop", ">= {k:g}x")
def _served_over_st_topk(m: dict, k: float, budget_ms: float, busy: str) -> tuple | None:
    if (t := m.get("st_topk")) is None:
        return None
    c = m.get("chosen")
    if c is None:
        return None, False, f"no point keeps p99 <= {budget_ms:g} ms; peak / loop {_fmt(m.get('peak_over_st_topk'))}"
    v = m["served_over_st_topk"]
    reason = (
        f"{c['throughput']:.0f}/s at c{c['concurrency']} (p99 {c['p99_ms']:.1f} ms) vs {t['throughput']:.0f}/s "
        f"(p50 {t['p50_ms']:.2f} ms, one text per call, {t['threads']} threads) in the same run"
    )
    return v, v >= k, reason + (busy if v < k else "")


def parts_text(f: dict) -> str:
    """The composing models' avg batch, queue and compute of a point (Triton's statistics)."""
    return (
        "; ".join(
            f"{n} batch {_fmt(p['avg_batch'], '')}, queue {_fmt(p['queue_ms'], ' ms')}, "
            f"compute {_fmt(p['compute_ms_per_execution'], ' ms')}/execution"
            for n, p in (f.get("parts") or {}).items()
        )
        or "n/a"
    )


@_goal(f"throughput / the {{cfg}} configs at c{COMPARE_AT}", ">= {k:g}x")
def _compare(m: dict, k: float, budget_ms: float, busy: str) -> tuple | None:
    row = next((r for r in m.get("compare", {}).get("points", []) if r["concurrency"] == COMPARE_AT), None)
    if row is None:
        return None, None, "not measured (make perf PERF_ARGS=--compare=...)"
    reason = (
        f"{row['throughput']:.0f}/s (p99 {row['p99_ms']:.1f} ms) vs {row['other_throughput']:.0f}/s "
        f"(p99 {row['other_p99_ms']:.1f} ms), measured back to back in the same run"
    )
    return row["throughput_ratio"], row["throughput_ratio"] >= k, reason


@_goal("INT8 / FP32 latency", f"<= {{k:g}} at batch {INT8_BATCH} where INT8 accuracy holds")
def _int8_latency(m: dict, k: float, budget_ms: float, busy: str) -> tuple | None:
    if (v := m.get("int8_latency_b64")) is None:
        return None
    prof = m.get("op_profile", {})
    how = "calls alternating between the two sessions" if m.get("int8_paired") else "one session after the other"
    base = f"INT8 p50 / FP32 p50 at batch {INT8_BATCH} = {v:.2f} (in-process ONNX Runtime, {how})."
    if prof:
        top = {
            p: ", ".join(f"{op} {share:.0f} %" for op, share in list(prof.get(p, {}).items())[:3])
            for p in ("fp32", "int8")
        }
        base += f" ONNX Runtime op profile at batch {INT8_BATCH}: FP32 [{top['fp32']}]; INT8 [{top['int8']}]."
    if prof.get("int8"):
        kc = kernel_classes(prof["int8"])
        base += (
            f" In the INT8 graph, integer kernels take {kc['integer']:.0f} % of the time, quantize/dequantize "
            f"{kc['qdq']:.0f} %, FP32 kernels {kc['float']:.0f} %"
        )
        if v > k and kc["integer"] < 5 and kc["qdq"] < 5:
            base += (
                ": the INT8 file runs the same FP32 kernels as model.onnx (its GEMMs were kept in FP32 at "
                "calibration), so no speed-up is possible and the difference between the two is measurement noise"
            )
        elif v > k and kc["float_gemm"] > kc["integer"]:
            base += (
                f": FP32 GEMM kernels still take {kc['float_gemm']:.0f} % (ONNX Runtime did not fuse those Q/DQ "
                "pairs into integer kernels), so INT8 adds Q/DQ work to FP32 math"
            )
        elif v > k:
            base += (
                ": the integer GEMMs are not where the time goes; the FP32 ops around them (top-k, gathers, "
                "pooling) are unchanged by INT8 and the quantize/dequantize steps add to them"
            )
        base += "."
    acc = m.get("int8_accuracy")
    if acc is not None and not acc.get("met", False):
        why = acc.get("reason") or "see calibration report"
        return v, None, f"not applicable: INT8 accuracy goal missed ({why}). {base}"
    return v, v <= k, base


@_goal("one sequence's tick, p99 (concurrency 1)", "<= {k:g} ms")
def _tick_p99_ms(m: dict, k: float, budget_ms: float, busy: str) -> tuple | None:
    if not (lone := m.get("lone")):
        return None
    run, best = min(lone.items(), key=lambda kv: kv[1]["p99_ms"])
    how = {"lone": "unary gRPC", "lone_streaming": "one gRPC stream (--streaming)"}
    parts = [
        f"perf_analyzer, {how.get(r, r)}: p50 / p99 {f['p50_ms']:.3f} / {f['p99_ms']:.3f} ms" for r, f in lone.items()
    ]
    client = m.get("stream_client") or {}
    parts += [
        f"StreamClient {mode}: p50 / p99 {c['p50_ms']:.3f} / {c['p99_ms']:.3f} ms"
        for mode, c in client.items()
        if isinstance(c, dict) and c.get("n")
    ]
    reason = f"best: {how.get(run, run)}. " + "; ".join(parts) + f". Profile: {profile(best)}"
    return best["p99_ms"], best["p99_ms"] <= k, reason + (f".{busy}" if best["p99_ms"] > k else "")


@_goal("critical p99 beside a c16 flood / alone", "<= {k:g}x")
def _lanes_p99_ratio(m: dict, k: float, budget_ms: float, busy: str) -> tuple | None:
    lanes = m.get("lanes") or {}
    if not lanes.get("lanes") or lanes["lanes"].get("p99_ratio") is None:
        return None if not lanes.get("error") else (None, None, f"not measured: {lanes['error']}")

    def one(name: str) -> str:
        r = lanes.get(name) or {}
        a, f = r.get("alone", {}), r.get("flooded", {})
        if not a.get("n") or not f.get("n"):
            return f"{name}: not measured"
        return (
            f"{name.replace('_', ' ')}: alone p50 / p99 {a['p50_ms']:.2f} / {a['p99_ms']:.2f} ms, flooded "
            f"{f['p50_ms']:.2f} / {f['p99_ms']:.2f} ms ({r['p99_ratio']:.2f}x), refused {f['refused'] or 'none'}, "
            f"flood {f['flood_throughput']:.0f}/s at avg batch {f['avg_batch'] or 0:.1f}"
        )

    v = lanes["lanes"]["p99_ratio"]
    reason = f"critical client (priority {lanes['critical']['priority']}, c1) vs perf_analyzer c{lanes['flood']['concurrency']}"
    reason += f" in the default lane, same run. {one('lanes')}; {one('no_lanes')}"
    return v, v <= k, reason + (f".{busy}" if v > k else ".")


def goals(models: dict, budget_ms: float, load: list[float] | None) -> list[dict]:
    """Every goal of perf/goals.yaml: value, met (None: not applicable), reason, threshold and direction."""
    busy = f" The cores are shared with other work (load average {load[0]:.1f} at the end of the run)." if load else ""
    out = []
    for kind, per_model in GOALS.items():
        goal, target, check = CHECKS[kind]
        for name, k in per_model.items():
            m = models.get(name) or {}
            value, met, reason = check(m, k, budget_ms, busy) or (None, None, "not measured")
            cfg = m.get("compare", {}).get("config", "--compare")
            fields = {"k": k, "pct": 100 * k, "budget": budget_ms, "cfg": cfg}
            out.append(
                {"goal": goal.format(**fields), "model": name, "target": target.format(**fields), "value": value}
                | {"met": met, "reason": reason, "threshold": k, "lower_is_better": kind in LOWER_IS_BETTER}
            )
    return out


INTEGER_OPS = ("QGemm", "QLinear", "MatMulInteger", "ConvInteger", "DynamicQuantize")
FLOAT_GEMMS = ("Gemm", "FusedGemm", "MatMul", "FusedMatMul", "Conv", "FusedConv")


def kernel_classes(shares: dict[str, float]) -> dict[str, float]:
    """ONNX Runtime op-type shares (%) grouped: integer kernels, quantize/dequantize, everything else."""
    out = {"integer": 0.0, "qdq": 0.0, "float": 0.0, "float_gemm": 0.0}
    for op, share in shares.items():
        if op.startswith(INTEGER_OPS):
            out["integer"] += share
        elif op in ("QuantizeLinear", "DequantizeLinear"):
            out["qdq"] += share
        else:
            out["float"] += share
            if op in FLOAT_GEMMS:
                out["float_gemm"] += share
    return out


def summarize(run_dir: Path, budget_ms: float = BUDGET_MS) -> dict:
    run_dir = Path(run_dir)
    records = load_records(run_dir)
    env = read_json(run_dir / "env.json", {})
    baselines = read_json(run_dir / "baselines.json", {})
    names = sorted({r["point"]["label"].split(".")[0] for r in records} - {"reservoir_stream"})
    compare = (env.get("run") or {}).get("compare")
    models = {n: model_summary(n, records, baselines, budget_ms, compare) for n in names}
    for path in sorted((run_dir / "lanes").glob("*.json")):
        models.setdefault(path.stem, {})["lanes"] = read_json(path)
    lone = {run: pts[0] for run in ("lone", "lone_streaming") if (pts := series(records, f"reservoir_stream.{run}"))}
    if lone or (run_dir / "stream_client.json").is_file():
        models["reservoir_stream"] = {"lone": lone, "stream_client": read_json(run_dir / "stream_client.json", {})}
    load = (env.get("machine_end") or {}).get("loadavg") or (env.get("machine") or {}).get("loadavg")
    summary = {
        **{k: env.get(k, {}) for k in ("run", "machine", "machine_end", "versions", "configs")},
        "budget_ms": budget_ms,
        "models": models,
        "stream": stream_summary(records),
        "extras": read_json(run_dir / "extras.json", {}),
        "errors": load_errors(run_dir),
        "goals": goals(models, budget_ms, load),
    }
    summary["ratios"] = gated_ratios(summary)
    return summary


def gated_ratios(summary: dict) -> dict[str, float]:
    out = {
        f"{name}.{key}": round(float(m[key]), 4)
        for name, m in summary["models"].items()
        for key in GATED
        if m.get(key) is not None
    }
    if (stream := summary.get("stream")) and stream["points"]:
        last = stream["points"][-1]
        out[f"reservoir_stream.throughput_over_windowed_c{last['concurrency']}"] = round(last["throughput_ratio"], 4)
    return out
