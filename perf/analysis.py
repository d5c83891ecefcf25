"""From recorded runs to figures: knee, chosen point, ratios, goals with profile-based reasons.

Everything here reads the files a run wrote (runs/<scenario>/*.json, baselines.json, extras.json,
env.json) and writes nothing; `summarize` returns the dict that `perf.run` stores as summary.json,
that `perf.report` renders and that `perf.gate` compares with perf/baseline.json.
"""

from __future__ import annotations

import json
from pathlib import Path

BUDGET_MS = 10.0  # p99 budget of the goals and of the chosen point
KNEE_FRACTION = 0.9  # the knee: the lowest concurrency reaching 90 % of the sweep's peak throughput
DYNBATCH_CONCURRENCY = 16

# Goals on the 2-core cpu target (the numbers); the report says met / missed and why.
SERVED_OVER_EAGER = {"nhits": 3.0, "similarity": 3.0, "reservoir": 2.0}
DYNBATCH_GOAL = 3.0
SERVED_OVER_ORT = {"nhits": 0.85, "similarity": 0.85}  # same file, same batch as the server formed
# served at concurrency 16 / an in-process ONNX Runtime batch-1 loop of model.onnx (the config's threads)
SERVED_C16_OVER_ORT_B1 = {"similarity": 4.0}
C1_THROUGHPUT = {"forecast_blend": 2500.0, "user_embedding": 2500.0}  # requests/s at concurrency 1, gRPC
COMPARE_GOAL = {"forecast": 2.0, "recommend": 2.0}  # committed / --compare config throughput at COMPARE_AT
COMPARE_AT = 8
INT8_LATENCY_GOAL = 0.6  # INT8 / FP32 latency at batch 64
INT8_BATCH = 64
GOAL_MODELS = ("nhits", "reservoir", "similarity")

# Ratios the regression gate watches: all "higher is better".
GATED = ("peak_over_eager", "dynbatch", "served_over_ort", "int8_speedup_b64")


def load_records(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(run_dir) / "runs").rglob("*.json"))]


def load_errors(run_dir: Path) -> dict[str, str]:
    """Points perf_analyzer could not measure: {stem: message}."""
    d = Path(run_dir) / "errors"
    return {p.stem: p.read_text().strip() for p in sorted(d.glob("*.txt"))} if d.is_dir() else {}


def _read(path: Path, default=None):
    return json.loads(path.read_text()) if path.is_file() else default


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
        "p50_ms": row["p50_ms"],
        "p90_ms": row.get("p90_ms"),
        "p95_ms": row.get("p95_ms"),
        "p99_ms": row["p99_ms"],
        "avg_ms": row.get("avg_ms"),
        "breakdown_us": row.get("breakdown_us", {}),
        "avg_batch": server.get("avg_batch"),
        "exec_ms": (server["compute_infer_ns"] / server["success_count"] / 1e6)
        if server.get("success_count")
        else None,
        "cache_hits": server.get("cache_hits", 0),
        "stable": rec.get("stable", True),
        "load": rec.get("loadavg_1min"),
        "composing": {m: s.get("avg_batch") for m, s in rec.get("server", {}).items() if m != p["model"]},
    }


def series(records: list[dict], label: str) -> list[dict]:
    pts = [flat(r) for r in records if r["point"]["label"] == label]
    return sorted(pts, key=lambda f: (f["batch_size"], f["concurrency"] or 0, f["request_rate"] or 0))


def knee(sweep: list[dict]) -> dict | None:
    if not sweep:
        return None
    peak = max(f["throughput"] for f in sweep)
    return next(f for f in sweep if f["throughput"] >= KNEE_FRACTION * peak)


def chosen(sweep: list[dict], budget_ms: float) -> dict | None:
    """Highest throughput whose p99 is within the budget."""
    ok = [f for f in sweep if f["p99_ms"] is not None and f["p99_ms"] <= budget_ms]
    return max(ok, key=lambda f: f["throughput"]) if ok else None


def at(sweep: list[dict], concurrency: int) -> dict | None:
    return next((f for f in sweep if f["concurrency"] == concurrency), None)


def dynbatch_concurrency(on: list[dict], off: list[dict]) -> int | None:
    """DYNBATCH_CONCURRENCY when both sides measured it, else the largest concurrency both measured."""
    common = {f["concurrency"] for f in on} & {f["concurrency"] for f in off}
    if not common:
        return None
    return DYNBATCH_CONCURRENCY if DYNBATCH_CONCURRENCY in common else max(common)


def profile(f: dict | None) -> str:
    """Where the average request's time goes, from perf_analyzer's client/server breakdown."""
    if not f:
        return "not measured"
    b = f["breakdown_us"]
    parts = {
        "queue": b.get("queue", 0),
        "compute": b.get("compute_input", 0) + b.get("compute_infer", 0) + b.get("compute_output", 0),
        "network+server send/recv": b.get("network", 0),
        "client": b.get("client_send", 0) + b.get("client_recv", 0),
    }
    total = sum(parts.values()) or 1.0
    text = ", ".join(f"{k} {v / 1000:.2f} ms ({100 * v / total:.0f} %)" for k, v in parts.items())
    batch = f" ; avg server batch {f['avg_batch']:.1f}" if f.get("avg_batch") else ""
    return f"avg {total / 1000:.2f} ms = {text}{batch}"


def bottleneck(f: dict | None) -> str:
    if not f:
        return ""
    b = f["breakdown_us"]
    parts = {
        "queue": b.get("queue", 0),
        "compute": b.get("compute_input", 0) + b.get("compute_infer", 0) + b.get("compute_output", 0),
        "transport": b.get("network", 0) + b.get("client_send", 0) + b.get("client_recv", 0),
    }
    top = max(parts, key=parts.get)
    return {
        "queue": "requests wait in Triton's queue for the model instance: the instance's executions already use the cores",
        "compute": "the model execution itself (ONNX Runtime in Triton's onnxruntime backend) dominates",
        "transport": "gRPC/HTTP transfer and Triton's request handling dominate, not the model",
    }[top]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _goal(goal: str, model: str, target: str, value: float | None, met: bool | None, reason: str) -> dict:
    return {"goal": goal, "model": model, "target": target, "value": value, "met": met, "reason": reason}


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
    for run in ("http", "batch", "rate", "shm", "noshm", "cached", "batching_off"):
        pts = series(records, f"{name}.{run}")
        if pts:
            out[run] = pts
    if not sweep:
        return out
    peak = max(sweep, key=lambda f: f["throughput"])
    out.update({"c1": at(sweep, 1) or sweep[0], "knee": knee(sweep), "peak": peak, "chosen": chosen(sweep, budget_ms)})
    c = dynbatch_concurrency(sweep, out.get("batching_off", []))
    if c is not None:
        out["dynbatch_concurrency"] = c
        out["dynbatch"] = ratio(at(sweep, c)["throughput"], at(out["batching_off"], c)["throughput"])
    b = baselines.get(name, {})
    eager = b.get("eager")
    if eager:
        out["eager"] = eager
        out["peak_over_eager"] = ratio(peak["throughput"], eager["throughput"])
        out["served_over_eager"] = ratio(out["chosen"] and out["chosen"]["throughput"], eager["throughput"])
    ortb = b.get("ort", {})
    if ortb:
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
        f32, i8 = pairs.get(str(INT8_BATCH), {}).get("fp32"), pairs.get(str(INT8_BATCH), {}).get("int8")
        out["int8_paired"] = bool(b.get("int8_paired"))
        if b.get("int8_paired"):
            out["int8_pairs"] = b["int8_paired"]
        out["int8_latency_b64"] = ratio(i8 and i8["p50_ms"], f32 and f32["p50_ms"])
        out["int8_speedup_b64"] = ratio(f32 and f32["p50_ms"], i8 and i8["p50_ms"])
        f1, i1 = pairs.get("1", {}).get("fp32"), pairs.get("1", {}).get("int8")
        out["int8_latency_b1"] = ratio(i1 and i1["p50_ms"], f1 and f1["p50_ms"])
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


def goals(models: dict, budget_ms: float, load: list[float] | None) -> list[dict]:
    out = []
    busy = f" The cores are shared with other work (load average {load[0]:.1f} at the end of the run)." if load else ""
    for name, k in SERVED_OVER_EAGER.items():
        m = models.get(name)
        if not m or "eager" not in m:
            out.append(
                _goal("served / PyTorch eager", name, f">= {k:g}x, p99 <= {budget_ms:g} ms", None, None, "not measured")
            )
            continue
        eager = m["eager"]
        c = m.get("chosen")
        if c is None:
            best = min(m["sweep"], key=lambda f: f["p99_ms"])
            reason = (
                f"no concurrency of the sweep keeps p99 <= {budget_ms:g} ms (lowest p99 {best['p99_ms']:.1f} ms at "
                f"concurrency {best['concurrency']}: {profile(best)}); {bottleneck(best)}. At any latency the peak is "
                f"{m['peak']['throughput']:.0f}/s = {_fmt(m.get('peak_over_eager'))} eager.{busy}"
            )
            out.append(
                _goal("served / PyTorch eager", name, f">= {k:g}x, p99 <= {budget_ms:g} ms", None, False, reason)
            )
            continue
        v = m["served_over_eager"]
        met = v >= k
        reason = (
            f"{c['throughput']:.0f}/s at concurrency {c['concurrency']} (p99 {c['p99_ms']:.1f} ms) vs eager "
            f"{eager['throughput']:.0f}/s (batch 1, p50 {eager['p50_ms']:.2f} ms). Profile: {profile(c)}"
        )
        if not met:
            reason += f"; {bottleneck(c)}.{busy}"
        out.append(_goal("served / PyTorch eager", name, f">= {k:g}x, p99 <= {budget_ms:g} ms", v, met, reason))
    for name in GOAL_MODELS:
        m = models.get(name, {})
        v = m.get("dynbatch")
        c = m.get("dynbatch_concurrency", DYNBATCH_CONCURRENCY)
        on, off = at(m.get("sweep", []), c), at(m.get("batching_off", []), c)
        if v is None:
            out.append(
                _goal(
                    "dynamic batching on / off",
                    name,
                    f">= {DYNBATCH_GOAL:g}x at c{DYNBATCH_CONCURRENCY}",
                    None,
                    None,
                    "not measured",
                )
            )
            continue
        per_row_on = on["exec_ms"] / on["avg_batch"] if on.get("exec_ms") and on.get("avg_batch") else None
        per_row_off = off["exec_ms"] if off.get("exec_ms") else None
        reason = (
            f"at c{c}: on {on['throughput']:.0f}/s, avg batch {on['avg_batch'] or 0:.1f}; off: {off['throughput']:.0f}/s. "
            f"Server execution per row: {_fmt(per_row_off, ' ms')} at batch 1 vs {_fmt(per_row_on, ' ms')} batched"
        )
        if per_row_on and per_row_off:
            gain = per_row_off / per_row_on
            reason += f" ({gain:.1f}x cheaper per row)"
            if v < min(gain, DYNBATCH_GOAL):
                reason += (
                    "; throughput rose less than per-row compute fell: per-request costs that batching does not "
                    "share (gRPC, Triton's per-request tensors, perf_analyzer's own client on the same cores) bound it"
                )
        if v < DYNBATCH_GOAL:
            reason += (
                "; batching can only help as much as a batched execution is cheaper per row than batch 1"
                f" (off-server profile: {profile(off)}).{busy}"
            )
        met: bool | None = v >= DYNBATCH_GOAL
        if c != DYNBATCH_CONCURRENCY:
            met, reason = None, f"measured at c{c} only, not c{DYNBATCH_CONCURRENCY} (quick profile): {reason}"
        target = f">= {DYNBATCH_GOAL:g}x at c{DYNBATCH_CONCURRENCY}"
        out.append(_goal("dynamic batching on / off", name, target, v, met, reason.rstrip(".") + "."))
    for name, k in SERVED_OVER_ORT.items():
        m = models.get(name, {})
        v = m.get("served_over_ort")
        if v is None:
            out.append(
                _goal("served / in-process ORT, same batch", name, f">= {100 * k:.0f} %", None, None, "not measured")
            )
            continue
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
        out.append(_goal("served / in-process ORT, same batch", name, f">= {100 * k:.0f} %", v, v >= k, reason))
    for name, k in SERVED_C16_OVER_ORT_B1.items():
        m = models.get(name, {})
        v, target = m.get("c16_over_ort_b1"), f">= {k:g}x"
        what = f"served at c{DYNBATCH_CONCURRENCY} / in-process ORT batch-1 loop (model.onnx)"
        if v is None:
            out.append(_goal(what, name, target, None, None, "not measured"))
            continue
        c16, b1 = at(m["sweep"], DYNBATCH_CONCURRENCY), m["ort"]["fp32"]["1"]
        reason = (
            f"served {c16['throughput']:.0f}/s at concurrency {DYNBATCH_CONCURRENCY} (p99 {c16['p99_ms']:.1f} ms, "
            f"avg server batch {c16['avg_batch'] or 0:.1f}) vs {b1['throughput']:.0f}/s for one query at a time "
            f"through model.onnx in this process ({b1['threads']} threads)"
        )
        out.append(_goal(what, name, target, v, v >= k, reason))
    for name, k in C1_THROUGHPUT.items():
        m = models.get(name, {})
        c1 = at(m.get("sweep", []), 1)
        target = f">= {k:,.0f}/s"
        if c1 is None:
            out.append(_goal("throughput at concurrency 1 (gRPC)", name, target, None, None, "not measured"))
            continue
        reason = f"p50 {c1['p50_ms']:.2f} ms, p99 {c1['p99_ms']:.2f} ms per request. Profile: {profile(c1)}"
        out.append(
            _goal("throughput at concurrency 1 (gRPC)", name, target, c1["throughput"], c1["throughput"] >= k, reason)
        )
    for name, k in COMPARE_GOAL.items():
        cmp = models.get(name, {}).get("compare")
        row = next((r for r in (cmp or {}).get("points", []) if r["concurrency"] == COMPARE_AT), None)
        what = f"throughput / the {cmp['config'] if cmp else '--compare'} configs at c{COMPARE_AT}"
        if row is None:
            out.append(_goal(what, name, f">= {k:g}x", None, None, "not measured (make perf PERF_ARGS=--compare=...)"))
            continue
        reason = (
            f"{row['throughput']:.0f}/s (p99 {row['p99_ms']:.1f} ms) vs {row['other_throughput']:.0f}/s "
            f"(p99 {row['other_p99_ms']:.1f} ms), measured back to back in the same run"
        )
        out.append(_goal(what, name, f">= {k:g}x", row["throughput_ratio"], row["throughput_ratio"] >= k, reason))
    for name in GOAL_MODELS:
        m = models.get(name, {})
        v = m.get("int8_latency_b64")
        acc = m.get("int8_accuracy")
        target = f"<= {INT8_LATENCY_GOAL:g} at batch {INT8_BATCH} where INT8 accuracy holds"
        if v is None:
            out.append(_goal("INT8 / FP32 latency", name, target, None, None, "not measured"))
            continue
        prof = m.get("op_profile", {})
        why = ""
        if prof:
            top = lambda p: ", ".join(f"{op} {share:.0f} %" for op, share in list(p.items())[:3])  # noqa: E731
            why = f" ONNX Runtime op profile at batch {INT8_BATCH}: FP32 [{top(prof.get('fp32', {}))}]; INT8 [{top(prof.get('int8', {}))}]."
        how = "calls alternating between the two sessions" if m.get("int8_paired") else "one session after the other"
        base = f"INT8 p50 / FP32 p50 at batch {INT8_BATCH} = {v:.2f} (in-process ONNX Runtime, {how}).{why}"
        if prof.get("int8"):
            k = kernel_classes(prof["int8"])
            base += (
                f" In the INT8 graph, integer kernels take {k['integer']:.0f} % of the time, quantize/dequantize "
                f"{k['qdq']:.0f} %, FP32 kernels {k['float']:.0f} %"
            )
            if v > INT8_LATENCY_GOAL and k["integer"] < 5 and k["qdq"] < 5:
                base += (
                    ": the INT8 file runs the same FP32 kernels as model.onnx (its GEMMs were kept in FP32 at "
                    "calibration), so no speed-up is possible and the difference between the two is measurement noise"
                )
            elif v > INT8_LATENCY_GOAL and k["float_gemm"] > k["integer"]:
                base += (
                    f": FP32 GEMM kernels still take {k['float_gemm']:.0f} % (ONNX Runtime did not fuse those Q/DQ "
                    "pairs into integer kernels), so INT8 adds Q/DQ work to FP32 math"
                )
            elif v > INT8_LATENCY_GOAL:
                base += ": the integer GEMMs are not where the time goes; the FP32 ops around them (top-k, gathers, "
                base += "pooling) are unchanged by INT8 and the quantize/dequantize steps add to them"
            base += "."
        if acc is not None and not acc.get("met", False):
            out.append(
                _goal(
                    "INT8 / FP32 latency",
                    name,
                    target,
                    v,
                    None,
                    f"not applicable: INT8 accuracy goal missed ({acc.get('reason') or 'see calibration report'}). {base}",
                )
            )
            continue
        out.append(_goal("INT8 / FP32 latency", name, target, v, v <= INT8_LATENCY_GOAL, base))
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


def _thresholds(goals_: list[dict]) -> list[dict]:
    """Numeric threshold and direction of each goal (for plots and checks)."""
    for g in goals_:
        name, model = g["goal"], g["model"]
        if name.startswith("served / PyTorch"):
            g["threshold"], g["lower_is_better"] = SERVED_OVER_EAGER[model], False
        elif name.startswith("dynamic batching"):
            g["threshold"], g["lower_is_better"] = DYNBATCH_GOAL, False
        elif name.startswith("served / in-process ORT"):
            g["threshold"], g["lower_is_better"] = SERVED_OVER_ORT[model], False
        elif name.startswith("served at c"):
            g["threshold"], g["lower_is_better"] = SERVED_C16_OVER_ORT_B1[model], False
        elif name.startswith("throughput at concurrency 1"):
            g["threshold"], g["lower_is_better"] = C1_THROUGHPUT[model], False
        elif name.startswith("throughput / the"):
            g["threshold"], g["lower_is_better"] = COMPARE_GOAL[model], False
        else:
            g["threshold"], g["lower_is_better"] = INT8_LATENCY_GOAL, True
    return goals_


def stream_summary(records: list[dict], scenario: str = "reservoir_stream") -> dict | None:
    stream, window = series(records, f"{scenario}.stream"), series(records, f"{scenario}.windowed")
    if not stream or not window:
        return None
    rows = []
    for s in stream:
        w = at(window, s["concurrency"])
        if w:
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
    extras = _read(run_dir / "extras.json", {})
    names = sorted({r["point"]["label"].split(".")[0] for r in records})
    compare = (env.get("run") or {}).get("compare")
    models = {n: model_summary(n, records, baselines, budget_ms, compare) for n in names if n != "reservoir_stream"}
    load = (env.get("machine_end") or {}).get("loadavg") or (env.get("machine") or {}).get("loadavg")
    summary = {
        "run": env.get("run", {}),
        "machine": env.get("machine", {}),
        "machine_end": env.get("machine_end", {}),
        "versions": env.get("versions", {}),
        "configs": env.get("configs", {}),
        "budget_ms": budget_ms,
        "models": models,
        "stream": stream_summary(records),
        "extras": extras,
        "errors": load_errors(run_dir),
        "goals": _thresholds(goals(models, budget_ms, load)),
    }
    summary["ratios"] = gated_ratios(summary)
    return summary


def gated_ratios(summary: dict) -> dict[str, float]:
    out = {}
    for name, m in summary["models"].items():
        for key in GATED:
            if m.get(key) is not None:
                out[f"{name}.{key}"] = round(float(m[key]), 4)
    stream = summary.get("stream")
    if stream and stream["points"]:
        last = stream["points"][-1]
        out[f"reservoir_stream.throughput_over_windowed_c{last['concurrency']}"] = round(last["throughput_ratio"], 4)
    return out
