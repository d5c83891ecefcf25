"""Human-readable summary of the export reports: `<artifacts>/reports/export.md`, also printed.

    python -m export.summary --artifacts artifacts --repo model_repository

Reads export.json, calibration.json, benchmark.json (and engines.json where plans
were built) from `<artifacts>/reports/`; a missing report becomes a line saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.cli import OneLineParser, require_dir, run_main
from common.files import read_json
from export import build_engine, graphs
from models import spec

log = logging.getLogger("export.summary")

PROG = "export.summary"


def _load(reports: Path, name: str) -> dict[str, Any] | None:
    path = reports / name
    return read_json(path) if path.is_file() else None


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.1f} MB" if path.is_file() else "-"


def _table(header: Sequence[str], rows: list[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def export_section(rep: dict[str, Any] | None) -> list[str]:
    out = ["## ONNX export: ONNX Runtime FP32 vs PyTorch", ""]
    if rep is None:
        return out + ["No export report (run `python -m export.onnx_export`).", ""]
    bound = rep["bound"]
    out += [f"Error measure: {bound['definition']}; bound {bound['fp32_rel_err']:g}.", ""]
    rows = []
    for name, r in rep.get("models", {}).items():
        cases = []
        ids = 0
        for case in ("random", "test", "test_batch1"):
            outs = r.get("verification", {}).get(case, {})
            errs = [v["rel_err"] for v in outs.values() if isinstance(v, dict) and "rel_err" in v]
            ids += sum(v.get("mismatches", 0) for v in outs.values() if isinstance(v, dict))
            cases.append(f"{max(errs):.1e}" if errs else "-")
        rows.append(
            [
                name,
                f"{r.get('exporter', '?')} / opset {r.get('opset', '?')}",
                *cases,
                ids,
                "pass" if r.get("passed") else "**FAIL**",
                "kept (unchanged)" if r.get("skipped") else f"{r.get('export_s', 0):.1f} + {r.get('verify_s', 0):.1f}",
            ]
        )
    return out + _table(
        ["model", "exporter", "rel err random (B=7)", "rel err test (B=64)", "rel err B=1", "id mismatches", "", "s"],
        rows,
    )


def _acc_cells(acc: dict[str, Any]) -> tuple[str, str, str]:
    if "cosine_min" in acc:  # text_encoder
        return "cosine min / recall@10", "1 / 1 (exact)", f"{acc['cosine_min']:.4f} / {acc['recall_at_k']:.4f}"
    if "recall_at_k" in acc:
        return "recall@10", "1 (exact)", f"{acc['recall_at_k']:.4f}"
    if "mae_fp32" in acc:
        return "MAE", f"{acc['mae_fp32']:.4g}", f"{acc['mae_int8']:.4g} ({100 * acc['mae_rel_change']:+.2f} %)"
    return "rel err", "-", f"{acc.get('rel_err', 0):.1e}"


def calibration_section(rep: dict[str, Any] | None) -> list[str]:
    out = ["## INT8 (Q/DQ) vs FP32 on the test split", ""]
    if rep is None:
        return out + ["No calibration report (run `python -m calibration.calibrate`).", ""]
    out += [f"Scheme: {rep.get('scheme', '?')}. Calibration data: {rep.get('calibration_manifest', '?')}.", ""]
    rows = []
    notes = []
    for name, r in rep.get("models", {}).items():
        acc = r.get("accuracy", {})
        metric, fp32, int8 = _acc_cells(acc) if acc else ("-", "-", "-")
        attempt = r.get("int8_attempt")
        if r.get("quantized"):
            served = "INT8 Q/DQ"
            if "rerank" in r:
                served += f" + FP32 rerank of {r['rerank']['shortlist']}"
        else:
            served = "FP32 copy"
        if attempt:
            a = attempt.get("accuracy", {})
            _, _, tried = _acc_cells(a)
            served += f"; INT8 attempt {tried}: goal **missed**"
        if "int8_only" in r and r["int8_only"]:
            io = r["int8_only"]
            served += f"; INT8-only recall {io['recall_at_k']:.4f} ({'met' if io['met'] else 'missed'})"
        met = acc.get("met")
        rows.append([name, served, metric, fp32, int8, acc.get("goal", "-"), "met" if met else "**missed**"])
        notes.append(f"- **{name}**: {r.get('why', '')}")
        for label, src in (("", r), ("INT8 attempt: ", attempt or {})):
            kept = src.get("nodes_kept_fp32")
            if kept:
                reasons = "; ".join(sorted(set(kept.values())))
                notes.append(f"  - {label}{len(kept)} GEMM nodes kept FP32 ({reasons})")
        for ops, why in (r.get("fp32_notes") or (attempt or {}).get("fp32_notes") or {}).items():
            notes.append(f"  - {ops}: {why}")
    return out + _table(["model", "model.int8.onnx", "metric", "FP32", "INT8", "goal", ""], rows) + notes + [""]


def encoder_section(rep: dict[str, Any] | None) -> list[str]:
    """The text encoder's candidate files against the gates (calibration.json "cpu_file")."""
    cpu = ((rep or {}).get("models", {}).get("text_encoder") or {}).get("cpu_file")
    if not cpu:
        return []
    out = ["## Text encoder: the file the cpu target serves", ""]
    out += [f"Held out: {cpu['held_out']}; catalog: {cpu['catalog']}. Gates: "]
    out[-1] += "; ".join(f"{k} {v}" for k, v in cpu["gates"].items()) + f". Timing: {cpu['timing']}.\n"
    rows = [
        [
            name + (" (**served**: model.cpu.onnx)" if name == cpu["chosen"] else ""),
            f"{c['cosine_fp32_mean']:.4f} / {c['cosine_fp32_min']:.4f}",
            f"{c['cosine_sentence_transformers_mean']:.4f} / {c['cosine_sentence_transformers_min']:.4f}",
            f"{c['recall_at_k']:.3f}",
            f"{c['batch_effect_max_abs']:.1e}",
            f"{c['batch1_p50_ms']:.2f}",
            f"{c['batch8_per_text_ms']:.2f}",
            "met" if c["meets_gates"] else "**missed**",
        ]
        for name, c in cpu["candidates"].items()
    ]
    head = ["candidate", "cosine to FP32 mean / min", "cosine to SentenceTransformer.encode mean / min", "recall@10"]
    head += ["alone vs in a batch (max abs)", "batch 1 p50 ms", "batch 8 ms per text", "gates"]
    return out + _table(head, rows) + [f"Chosen: {cpu['chosen']} ({cpu['why']}).", ""]


def files_section(repo: Path) -> list[str]:
    rows = []
    problems = []
    for name in graphs.ALL_MODELS:
        vdir = spec.version_dir(name, repo)
        files = [vdir / f for f in (spec.ONNX_FP32, spec.ONNX_INT8, spec.PLAN_FP16, spec.PLAN_INT8)]
        rows.append([name, *(_mb(f) for f in files)])
        for plan in files[2:]:
            if plan.is_file():
                problems += [f"- {name}/{plan.name}: {p}" for p in build_engine.check_plan_provenance(plan)]
    out = ["## Files", ""] + _table(["model", spec.ONNX_FP32, spec.ONNX_INT8, spec.PLAN_FP16, spec.PLAN_INT8], rows)
    if not any(r[3] != "-" for r in rows):
        out += ["No TensorRT plans here: build them in the TensorRT container with `make export TARGET=gpu`.", ""]
    if problems:
        out += ["Plan provenance problems:", *problems, ""]
    return out


def benchmark_section(rep: dict[str, Any] | None) -> list[str]:
    out = ["## Latency and throughput (CPU)", ""]
    if rep is None:
        return out + ["No benchmark report (run `python -m export.benchmark`).", ""]
    out += [
        f"{rep['threads']} thread(s) on {rep['machine']['cpus']} CPUs ({rep['machine']['processor']}), "
        f"torch {rep['versions']['torch']}, onnxruntime {rep['versions']['onnxruntime']}; "
        f"median / p99 ms per call, throughput in samples/s"
        + (" -- `--small` run: too few calls for numbers to trust" if rep.get("small") else ""),
        "",
    ]
    rows = []
    for name, r in rep.get("models", {}).items():
        for key, row in r.items():
            if not key.startswith("batch_"):
                continue
            cells = [
                f"{row[rt]['median_ms']:.3f} / {row[rt]['p99_ms']:.3f}" for rt in ("torch", "ort_fp32", "ort_int8")
            ]
            tput = " / ".join(f"{row[rt]['throughput_per_s']:,.0f}" for rt in ("torch", "ort_fp32", "ort_int8"))
            int8 = "" if r.get("int8_scheme") != "fp32-copy" else " (INT8 = FP32 copy)"
            rows.append([name + int8, key.removeprefix("batch_"), *cells, tput])
    return out + _table(
        ["model", "batch", "PyTorch eager", "ORT FP32", "ORT INT8", "throughput torch / FP32 / INT8"], rows
    )


def render(artifacts: Path, repo: Path) -> str:
    reports = artifacts / "reports"
    lines = [f"# Export report: {artifacts} -> {repo}", ""]
    lines += export_section(_load(reports, "export.json"))
    lines += calibration_section(_load(reports, "calibration.json"))
    lines += encoder_section(_load(reports, "calibration.json"))
    lines += files_section(repo)
    lines += benchmark_section(_load(reports, "benchmark.json"))
    engines = _load(reports, "engines.json")
    if engines:
        lines += ["## TensorRT", "", f"TensorRT {engines['tensorrt_version']} on {engines['gpu']['name']}.", ""]
    return "\n".join(lines).rstrip() + "\n"


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, required=True, help="artifacts directory holding reports/")
    p.add_argument("--repo", type=Path, required=True, help="model repository (file sizes, plan provenance)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require_dir(args.artifacts, "artifacts directory")
    require_dir(args.repo, "model repository")
    spec.use_dims_of(args.artifacts)  # the window, horizon and embedding sizes training used
    text = render(args.artifacts, args.repo)
    path = graphs.reports_dir(args.artifacts) / "export.md"
    path.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    run_main(PROG, main)
