"""The GPU section of the perf report: it renders from CPU-mode JSON and never invents GPU figures."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from perf.gpu import report


def claim_rows(text: str) -> list[str]:
    section = text.split("### Seed claims", 1)[1].split("###", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and "claim" not in line]


def test_section_from_a_cpu_run_says_not_measured_for_every_gpu_row(probe_doc):
    text = report.render(probe_doc)
    assert "**not measured: no GPU lent.**" in text
    rows = claim_rows(text)
    assert len(rows) == len(report.CLAIMS)
    for row in rows:
        assert row.endswith("| not measured: no GPU lent |")
        assert " met " not in row and "missed" not in row
    for heading in ("### In process", "### Similarity against its physical floor", "### Served by Triton on the GPU"):
        assert text.split(heading, 1)[1].split("\n\n", 2)[1].startswith("not measured: no GPU lent")


def test_cpu_figures_appear_only_labelled_as_cpu(probe_doc):
    text = report.render(probe_doc)
    cpu = text.split("### CPU figures from this run", 1)[1]
    assert "(CPU, not GPU" in cpu and "eager fp32 median (CPU)" in cpu
    gpu_part = text.split("### In process", 1)[1].split("### CPU figures from this run", 1)[0]
    assert not [line for line in gpu_part.splitlines() if line.startswith("|")]  # no GPU table holds a figure


def test_section_names_machine_versions_and_command(probe_doc):
    text = report.render(probe_doc)
    assert probe_doc["command"] in text
    assert f"torch {probe_doc['versions']['torch']}" in text
    assert "What TensorRT would change" in text


def test_report_cli_prints_the_section(probe_doc, tmp_path, capsys):
    path = tmp_path / "probe.json"
    path.write_text(json.dumps(probe_doc))
    assert report.main(["--probe", str(path)]) == 0
    assert "not measured: no GPU lent" in capsys.readouterr().out
    assert report.main(["--probe", str(path), "--out", str(tmp_path / "section.md")]) == 0
    assert (tmp_path / "section.md").read_text() == report.render(probe_doc)


def test_gpu_shaped_json_gets_verdicts_from_its_own_numbers(probe_doc):
    # Shape only: the CPU document relabelled as a GPU run, to exercise the code that renders GPU figures.
    doc = copy.deepcopy(probe_doc)
    doc["machine"]["device"] = "cuda"
    doc["machine"]["gpu"] = {
        "name": "TEST-ONLY",
        "capability": "9.0",
        "sm_count": 1,
        "memory_gib": 1.0,
        "l2_mib": None,
        "driver": None,
    }
    for r in doc["results"]:
        if r["status"] == "ok":
            r["timer"] = "cuda_events"
    text = report.render(doc)
    assert "not measured: no GPU lent." not in text.split("### In process", 1)[1].split("###", 1)[0]
    rows = {row.split(" | ")[0].lstrip("| "): row for row in claim_rows(text)}
    latency = rows["reservoir p99 latency, one window"]
    p99 = min(
        r["latency_ms"]["p99"]
        for r in doc["results"]
        if r["model"] == "reservoir" and r["batch"] == 1 and report.usable(r)
    )
    assert latency.endswith("| met |" if p99 < 5.0 else "| missed |")
    assert rows["nhits forecasts/s at batch 128"].endswith("| not measured: no GPU lent |")  # reduced: no batch 128
    assert "**reservoir**" in text and "**similarity**" in text


def test_a_cpu_serving_run_is_not_reported_as_gpu_serving(probe_doc):
    serving = {
        "schema_version": 1,
        "kind": "gpu_serving",
        "created": "2026-01-01T00:00:00+00:00",
        "command": "python -m perf.gpu.serve --config torch_cpu",
        "machine": probe_doc["machine"],
        "versions": probe_doc["versions"],
        "config_name": "torch_cpu",
        "instance_kind": "KIND_CPU",
        "precision": "fp32",
        "cuda_graphs": False,
        "weights": {},
        "status": "ok",
        "reason": None,
        "checks": [],
        "scenarios": [
            {
                "model": "nhits",
                "protocol": "grpc",
                "batch": 1,
                "concurrency": 1,
                "status": "ok",
                "reason": None,
                "throughput_per_s": 100.0,
                "latency_us": {"avg": 1.0, "p50": 1.0, "p90": 1.0, "p95": 1.0, "p99": 1.0},
                "server_us": {"queue": 1.0},
            }
        ],
        "seconds": 1.0,
    }
    text = report.render(probe_doc, serving)
    served = text.split("### Served by Triton on the GPU", 1)[1].split("###", 1)[0]
    assert "not measured: no GPU lent (the serving JSON given is a CPU run" in served
    with pytest.raises(ValueError):
        report.render(probe_doc, {**serving, "status": "great"})


def test_gpu_shaped_serving_json_fills_the_served_column_and_table(probe_doc):
    # Shape only: fabricated numbers exercise the code that renders a GPU serving run.
    gpu = {"name": "TEST-ONLY", "capability": "9.0", "sm_count": 1, "memory_gib": 1.0, "l2_mib": None, "driver": None}
    machine = {**probe_doc["machine"], "device": "cuda", "gpu": gpu}

    def scenario(model: str, concurrency: int, rate: float, p99_us: float) -> dict:
        lat = {"avg": p99_us / 2, "p50": p99_us / 2, "p90": p99_us, "p95": p99_us, "p99": p99_us}
        return {
            "model": model,
            "protocol": "grpc",
            "batch": 1,
            "concurrency": concurrency,
            "status": "ok",
            "reason": None,
            "throughput_per_s": rate,
            "latency_us": lat,
            "server_us": {"queue": 10.0, "compute_input": 5.0, "compute_infer": 100.0, "compute_output": 5.0},
        }

    serving = {
        "schema_version": 1,
        "kind": "gpu_serving",
        "created": "2026-01-01T00:00:00+00:00",
        "command": "python -m perf.gpu.serve",
        "machine": machine,
        "versions": probe_doc["versions"],
        "config_name": "torch_gpu",
        "instance_kind": "KIND_GPU",
        "precision": "fp32",
        "cuda_graphs": True,
        "weights": {},
        "status": "ok",
        "reason": None,
        "checks": [
            {"model": "reservoir", "status": "ok", "reason": None, "rows": 16, "rel_err": 1e-7, "topk_agreement": None}
        ],
        "scenarios": [
            scenario("reservoir", 1, 900.0, 4000.0),
            scenario("reservoir", 8, 3000.0, 8000.0),
            scenario("similarity", 1, 2000.0, 900.0),
        ],
        "seconds": 1.0,
    }
    text = report.render(probe_doc, serving)
    rows = {row.split(" | ")[0].lstrip("| "): row for row in claim_rows(text)}
    assert "p99 4.00 ms (concurrency 1)" in rows["reservoir p99 latency, one window"]
    assert "3,000/s (batch 1, concurrency 8)" in rows["reservoir predictions/s"]
    assert "p50 450 µs (concurrency 1)" in rows["similarity single-query latency"]
    served = text.split("### Served by Triton on the GPU", 1)[1].split("###", 1)[0]
    assert "| reservoir | 1 | 8 | 3,000/s | 4.00 ms | 8.00 ms | 10 µs | 110 µs |" in served
    assert "1 of 1 models agree" in served


DATA = Path(__file__).parent / "data"


def as_gpu(doc: dict) -> dict:
    """Shape only: a CPU probe document relabelled as a GPU run, to exercise the code that renders GPU figures."""
    doc = copy.deepcopy(doc)
    gpu = {"name": "TEST-ONLY", "capability": "9.0", "sm_count": 1, "memory_gib": 1.0, "l2_mib": None, "driver": None}
    doc["machine"] |= {"device": "cuda", "gpu": gpu}
    doc["kernels_per_call"] = {"reservoir": 700, "nhits": 40}
    for r in doc["results"]:
        r["timer"] = "cuda_events"
    return doc


def test_recorded_documents_render_the_sections_recorded_with_them():
    """tests/gpu/data/section_*.md were rendered from these documents before perf/ was consolidated (issue 17):
    every claim, table and note, to the character. serving_test_only.json holds made-up numbers."""
    probe = json.loads((DATA / "probe_cpu.json").read_text())
    serving = json.loads((DATA / "serving_test_only.json").read_text())
    cpu_serving = {**serving, "machine": probe["machine"], "instance_kind": "KIND_CPU", "config_name": "torch_cpu"}
    assert report.render(probe, cpu_serving) == (DATA / "section_cpu.md").read_text()
    assert report.render(as_gpu(probe), serving) == (DATA / "section_gpu.md").read_text()
