"""From recorded runs to figures: knee, chosen point, ratios, goals with profile-based reasons.

Everything here reads the files a run wrote (runs/<scenario>/*.json, baselines.json, extras.json,
env.json) and writes nothing; `summarize` returns the dict that `perf.run` stores as summary.json,
that `perf.report` renders and that `perf.gate` compares with perf/baseline.json. The goals and their
thresholds are data: perf/goals.yaml.
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


def _read(path: Path, default=None):
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
        "model": p["model"],
        "label": p["label"],
        "protocol": p["protocol"],
        "concurrency": p.get("concurrency"),
        "request_rate": p.get("request_rate"),
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
    b = f["breakdown_us"]
    parts = _parts(b)
    parts = {"queue": parts["queue"], "compute": parts["compute"], "transport": b.get("network", 0) + parts["client"]}
    return BOTTLENECK[max(parts, key=parts.get)]


def compare_summary(sweep: list[dict], other: list[dict], config: str) -> dict:
    """The committed configs' sweep against the --compare config's, concurrency by concurrency."""
    rows = []
    for f in sweep:
        g = at(other, f["concurrency"])
        if g is not None and f["batch_size"] == g["batch_size"]:
            rows.append(
                {
                    "concurrency": f["concurrency"],
                    "throughput": f["throughput"],
                    "other_throughput": g["throughput"],
                    "throughput_ratio": ratio(f["throughput"], g["throughput"]),
                    "p50_ms": f["p50_ms"],
                    "other_p50_ms": g["p50_ms"],
                    "p99_ms": f["p99_ms"],
                    "other_p99_ms": g["p99_ms"],
                }
            )
    return {"config": config, "points": rows, "sweep": other}


def model_summary(
    name: str, records: list[dict], baselines: dict, budget_ms: float, compare: str | None = None
) -> dict:
    sweep = series(records, f"{name}.sweep")
    out: dict = {"sweep": sweep}
    other = series(records, f"{name}.sweep@{compare}") if compare else []
    if other:
        out["compare"] = compare_summary(sweep, other, compare)
    out.update({run: pts for run in RUNS if (pts := series(records, f"{name}.{run}"))})
    if not sweep:
        return out
    peak = max(sweep, key=lambda f: f["throughput"])
    out.update({"c1": at(sweep, 1) or sweep[0], "knee": knee(sweep), "peak": peak, "chosen": chosen(sweep, budget_ms)})
    # DYNBATCH_CONCURRENCY when both sides measured it, else the largest concurrency both measured
    common = {f["concurrency"] for f in sweep} & {f["concurrency"] for f in out.get("batching_off", [])}
    if common:
        c = out["dynbatch_concurrency"] = DYNBATCH_CONCURRENCY if DYNBATCH_CONCURRENCY in common else max(common)
        out["dynbatch"] = ratio(at(sweep, c)["throughput"], at(out["batching_off"], c)["throughput"])
    b = baselines.get(name, {})
    if eager := b.get("eager"):
        out["eager"] = eager
        out["peak_over_eager"] = ratio(peak["throughput"], eager["throughput"])
        out["served_over_eager"] = ratio(out["chosen"] and out["chosen"]["throughput"], eager["throughput"])
    if ortb := b.get("ort", {}):
        out["ort"] = ortb
        ref = out["chosen"] or peak
        out["served_precision"] = b.get("served_precision", "fp32")
        same = ortb.get(out["served_precision"], {}).get(str(b.get("served_batch")))
        out["served_batch"] = b.get("served_batch")
        out["served_over_ort"] = ratio(ref["throughput"], same and same["throughput"])
        c16, b1 = at(sweep, DYNBATCH_CONCURRENCY), ortb.get("fp32", {}).get("1")
        out["c16_over_ort_b1"] = ratio(c16 and c16["throughput"], b1 and b1["throughput"])
        # INT8 vs FP32 from the alternating (paired) measurement where there is one, else the two sweeps
        pairs = b.get("int8_paired") or {
            str(k): {p: ortb.get(p, {}).get(str(k)) for p in ("fp32", "int8")} for k in (1, INT8_BATCH)
        }
        out["int8_paired"] = bool(b.get("int8_paired"))
        if b.get("int8_paired"):
            out["int8_pairs"] = b["int8_paired"]
        p50 = {
            (k, p): (pairs.get(k, {}).get(p) or {}).get("p50_ms")
            for k in ("1", str(INT8_BATCH))
            for p in ("fp32", "int8")
        }
        out["int8_latency_b64"] = ratio(p50[str(INT8_BATCH), "int8"], p50[str(INT8_BATCH), "fp32"])
        out["int8_speedup_b64"] = ratio(p50[str(INT8_BATCH), "fp32"], p50[str(INT8_BATCH), "int8"])
        out["int8_latency_b1"] = ratio(p50["1", "int8"], p50["1", "fp32"])
    st = b.get("sentence_transformers")
    if st:  # the text search against SentenceTransformer.encode at batch 1, in-process
        out["sentence_transformers"] = st
        c1 = out["c1"]
        out["st_p50_over_served_c1_p50"] = ratio(st["p50_ms"], c1["p50_ms"])
        c16 = at(sweep, DYNBATCH_CONCURRENCY)
        out["served_c16_over_st"] = ratio(c16 and c16["throughput"], st["throughput"])
    if b.get("int8_accuracy") is not None:
        out["int8_accuracy"] = b["int8_accuracy"]
    if b.get("op_profile"):
        out["op_profile"] = b["op_profile"]
    return out


def _fmt(v: float | None, unit: str = "x") -> str:
    return "n/a" if v is None else f"{v:.2f}{unit}"


# ----------------------------------------------------------------------------------- goals
# One function per kind of perf/goals.yaml: (model summary, threshold, budget, load note) ->
# (goal, target, value, met, reason); value None means not measured.


def _served_over_eager(m: dict, k: float, budget_ms: float, busy: str) -> tuple:
    goal, target = "served / PyTorch eager", f">= {k:g}x, p99 <= {budget_ms:g} ms"
    if "eager" not in m:
        return goal, target, None, None, "not measured"
    eager, c = m["eager"], m.get("chosen")
    if c is None:
        best = min(m["sweep"], key=lambda f: f["p99_ms"])
        reason = (
            f"no concurrency of the sweep keeps p99 <= {budget_ms:g} ms (lowest p99 {best['p99_ms']:.1f} ms at "
            f"concurrency {best['concurrency']}: {profile(best)}); {bottleneck(best)}. At any latency the peak is "
            f"{m['peak']['throughput']:.0f}/s = {_fmt(m.get('peak_over_eager'))} eager.{busy}"
        )
        return goal, target, None, False, reason
    v = m["served_over_eager"]
    reason = (
        f"{c['throughput']:.0f}/s at concurrency {c['concurrency']} (p99 {c['p99_ms']:.1f} ms) vs eager "
        f"{eager['throughput']:.0f}/s (batch 1, p50 {eager['p50_ms']:.2f} ms). Profile: {profile(c)}"
    )
    return goal, target, v, v >= k, reason + (f"; {bottleneck(c)}.{busy}" if v < k else "")


def _dynbatch(m: dict, k: float, budget_ms: float, busy: str) -> tuple:
    goal, target = "dynamic batching on / off", f">= {k:g}x at c{DYNBATCH_CONCURRENCY}"
    v = m.get("dynbatch")
    if v is None:
        return goal, target, None, None, "not measured"
    c = m.get("dynbatch_concurrency", DYNBATCH_CONCURRENCY)
    on, off = at(m.get("sweep", []), c), at(m.get("batching_off", []), c)
    per_row_on = on["exec_ms"] / on["avg_batch"] if on.get("exec_ms") and on.get("avg_batch") else None
    per_row_off = off["exec_ms"] if off.get("exec_ms") else None
    reason = (
        f"at c{c}: on {on['throughput']:.0f}/s, avg batch {on['avg_batch'] or 0:.1f}; off: {off['throughput']:.0f}/s. "
        f"Server execution per row: {_fmt(per_row_off, ' ms')} at batch 1 vs {_fmt(per_row_on, ' ms')} batched"
    )
    if per_row_on and per_row_off:
        gain = per_row_off / per_row_on
        reason += f" ({gain:.1f}x cheaper per row)"
        if v < min(gain, k):
            reason += (
                "; throughput rose less than per-row compute fell: per-request costs that batching does not "
                "share (gRPC, Triton's per-request tensors, perf_analyzer's own client on the same cores) bound it"
            )
    if v < k:
        reason += (
            "; batching can only help as much as a batched execution is cheaper per row than batch 1"
            f" (off-server profile: {profile(off)}).{busy}"
        )
    met: bool | None = v >= k
    if c != DYNBATCH_CONCURRENCY:
        met, reason = None, f"measured at c{c} only, not c{DYNBATCH_CONCURRENCY} (quick profile): {reason}"
    return goal, target, v, met, reason.rstrip(".") + "."


def _served_over_ort(m: dict, k: float, budget_ms: float, busy: str) -> tuple:
    goal, target = "served / in-process ORT, same batch", f">= {100 * k:.0f} %"
    v = m.get("served_over_ort")
    if v is None:
        return goal, target, None, None, "not measured"
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
    return goal, target, v, v >= k, reason


def _c16_over_ort_b1(m: dict, k: float, budget_ms: float, busy: str) -> tuple:
    c = DYNBATCH_CONCURRENCY
    goal, target = f"served at c{c} / in-process ORT batch-1 loop (model.onnx)", f">= {k:g}x"
    v = m.get("c16_over_ort_b1")
    if v is None:
        return goal, target, None, None, "not measured"
    c16, b1 = at(m["sweep"], c), m["ort"]["fp32"]["1"]
    reason = (
        f"served {c16['throughput']:.0f}/s at concurrency {c} (p99 {c16['p99_ms']:.1f} ms, "
        f"avg server batch {c16['avg_batch'] or 0:.1f}) vs {b1['throughput']:.0f}/s for one query at a time "
        f"through model.onnx in this process ({b1['threads']} threads)"
    )
    return goal, target, v, v >= k, reason


def _c1_throughput(m: dict, k: float, budget_ms: float, busy: str) -> tuple:
    goal, target = "throughput at concurrency 1 (gRPC)", f">= {k:,.0f}/s"
    c1 = at(m.get("sweep", []), 1)
    if c1 is None:
        return goal, target, None, None, "not measured"
    reason = f"p50 {c1['p50_ms']:.2f} ms, p99 {c1['p99_ms']:.2f} ms per request. Profile: {profile(c1)}"
    return goal, target, c1["throughput"], c1["throughput"] >= k, reason


def _compare(m: dict, k: float, budget_ms: float, busy: str) -> tuple:
    cmp = m.get("compare")
    row = next((r for r in (cmp or {}).get("points", []) if r["concurrency"] == COMPARE_AT), None)
    goal, target = f"throughput / the {cmp['config'] if cmp else '--compare'} configs at c{COMPARE_AT}", f">= {k:g}x"
    if row is None:
        return goal, target, None, None, "not measured (make perf PERF_ARGS=--compare=...)"
    reason = (
        f"{row['throughput']:.0f}/s (p99 {row['p99_ms']:.1f} ms) vs {row['other_throughput']:.0f}/s "
        f"(p99 {row['other_p99_ms']:.1f} ms), measured back to back in the same run"
    )
    return goal, target, row["throughput_ratio"], row["throughput_ratio"] >= k, reason


def _int8_latency(m: dict, k: float, budget_ms: float, busy: str) -> tuple:
    goal, target = "INT8 / FP32 latency", f"<= {k:g} at batch {INT8_BATCH} where INT8 accuracy holds"
    v = m.get("int8_latency_b64")
    if v is None:
        return goal, target, None, None, "not measured"
    prof, why = m.get("op_profile", {}), ""
    if prof:
        top = lambda p: ", ".join(f"{op} {share:.0f} %" for op, share in list(p.items())[:3])  # noqa: E731
        why = f" ONNX Runtime op profile at batch {INT8_BATCH}: FP32 [{top(prof.get('fp32', {}))}]; INT8 [{top(prof.get('int8', {}))}]."
    how = "calls alternating between the two sessions" if m.get("int8_paired") else "one session after the other"
    base = f"INT8 p50 / FP32 p50 at batch {INT8_BATCH} = {v:.2f} (in-process ONNX Runtime, {how}).{why}"
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
            base += ": the integer GEMMs are not where the time goes; the FP32 ops around them (top-k, gathers, "
            base += "pooling) are unchanged by INT8 and the quantize/dequantize steps add to them"
        base += "."
    acc = m.get("int8_accuracy")
    if acc is not None and not acc.get("met", False):
        why = acc.get("reason") or "see calibration report"
        return goal, target, v, None, f"not applicable: INT8 accuracy goal missed ({why}). {base}"
    return goal, target, v, v <= k, base


CHECKS = {
    "served_over_eager": _served_over_eager,
    "dynbatch": _dynbatch,
    "served_over_ort": _served_over_ort,
    "c16_over_ort_b1": _c16_over_ort_b1,
    "c1_throughput": _c1_throughput,
    "compare": _compare,
    "int8_latency": _int8_latency,
}
LOWER_IS_BETTER = {"int8_latency"}


def goals(models: dict, budget_ms: float, load: list[float] | None) -> list[dict]:
    """Every goal of perf/goals.yaml: value, met (None: not applicable), reason, threshold and direction."""
    busy = f" The cores are shared with other work (load average {load[0]:.1f} at the end of the run)." if load else ""
    out = []
    for kind, per_model in GOALS.items():
        for name, k in per_model.items():
            goal, target, value, met, reason = CHECKS[kind](models.get(name) or {}, k, budget_ms, busy)
            out.append(
                {"goal": goal, "model": name, "target": target, "value": value, "met": met, "reason": reason}
                | {"threshold": k, "lower_is_better": kind in LOWER_IS_BETTER}
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


def stream_summary(records: list[dict], scenario: str = "reservoir_stream") -> dict | None:
    stream, window = series(records, f"{scenario}.stream"), series(records, f"{scenario}.windowed")
    if not stream or not window:
        return None
    rows = []
    for s in stream:
        if w := at(window, s["concurrency"]):
            rows.append(
                {
                    "concurrency": s["concurrency"],
                    "stream_ticks_per_s": s["throughput"],
                    "window_per_s": w["throughput"],
                    "throughput_ratio": s["throughput"] / w["throughput"],
                    "stream_p99_ms": s["p99_ms"],
                    "window_p99_ms": w["p99_ms"],
                    "p99_ratio": s["p99_ms"] / w["p99_ms"] if w["p99_ms"] else None,
                    "stream_avg_batch": s["avg_batch"],
                    "window_avg_batch": w["avg_batch"],
                }
            )
    return {"points": rows, "stream": stream, "window": window}


def summarize(run_dir: Path, budget_ms: float = BUDGET_MS) -> dict:
    run_dir = Path(run_dir)
    records = load_records(run_dir)
    env = _read(run_dir / "env.json", {})
    baselines = _read(run_dir / "baselines.json", {})
    names = sorted({r["point"]["label"].split(".")[0] for r in records})
    compare = (env.get("run") or {}).get("compare")
    models = {n: model_summary(n, records, baselines, budget_ms, compare) for n in names if n != "reservoir_stream"}
    load = (env.get("machine_end") or {}).get("loadavg") or (env.get("machine") or {}).get("loadavg")
    summary = {
        **{k: env.get(k, {}) for k in ("run", "machine", "machine_end", "versions", "configs")},
        "budget_ms": budget_ms,
        "models": models,
        "stream": stream_summary(records),
        "extras": _read(run_dir / "extras.json", {}),
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
    stream = summary.get("stream")
    if stream and stream["points"]:
        last = stream["points"][-1]
        out[f"reservoir_stream.throughput_over_windowed_c{last['concurrency']}"] = round(last["throughput_ratio"], 4)
    return out
