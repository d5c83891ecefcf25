"""The field's scanners on what we deploy: checkov on the Dockerfiles and on both rendered Kubernetes overlays,
hadolint on the Dockerfiles (test_docker.py). No failed check; every skipped one carries its reason beside it
(a `# checkov:skip=ID: reason` line in a Dockerfile, a `checkov.io/skipN: ID=reason` annotation in a manifest).
checkov has no Compose framework: tests/deploy/test_compose.py holds compose to the same rules."""

from __future__ import annotations

import json
import re

import pytest

from tests.deploy.support import DOCKER, K8S, ROOT, check, run, tool

CHECKOV_VENV = ROOT / ".venv-checkov"


def checkov(*args: str) -> list[dict]:
    """checkov's JSON report, one dict per framework; offline (--skip-download)."""
    binary = CHECKOV_VENV / "bin" / "checkov"
    if not binary.is_file():
        binary = tool("checkov", "make .venv-checkov/.installed (deploy/checkov.txt; make test and check-deploy do it)")
    proc = run([str(binary), "--skip-download", "--output", "json", *args], timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    return data if isinstance(data, list) else [data]


def failures(reports: list[dict]) -> list[str]:
    return [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for r in reports
        for c in r.get("results", {}).get("failed_checks", [])
    ]


def skips(reports: list[dict]) -> list[dict]:
    return [c for r in reports for c in r.get("results", {}).get("skipped_checks", [])]


def reason(skip: dict) -> str:
    return ((skip.get("check_result") or {}).get("suppress_comment") or "").strip()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("k8s")
    kubectl = tool("kubectl", "kubectl (with its built-in kustomize) is part of the machine image")
    for overlay in ("gpu", "cpu"):
        (out / f"{overlay}.yaml").write_text(check([kubectl, "kustomize", str(K8S / "overlays" / overlay)]))
    return out


def test_checkov_passes_both_dockerfiles_with_a_reason_beside_every_skip():
    reports = checkov(
        "--framework", "dockerfile", "-f", str(DOCKER / "Dockerfile"), "-f", str(DOCKER / "Dockerfile.export")
    )
    assert failures(reports) == []
    passed = sum(len(r["results"]["passed_checks"]) for r in reports)
    assert passed > 20
    for name in ("Dockerfile", "Dockerfile.export"):
        text = (DOCKER / name).read_text()
        for m in re.finditer(r"checkov:skip=(\w+)(.*)", text):
            assert len(m.group(2).strip(": ")) > 20, f"{name}: skip of {m.group(1)} without a reason"
    for skip in skips(reports):
        assert len(reason(skip)) > 20, skip["check_id"]


def test_checkov_passes_both_kubernetes_overlays_with_a_reason_beside_every_skip(rendered):
    reports = checkov("--framework", "kubernetes", "-d", str(rendered))
    assert failures(reports) == []
    kinds = {c["resource"].split(".")[0] for r in reports for c in r["results"]["passed_checks"]}
    assert "Deployment" in kinds
    for skip in skips(reports):
        assert len(reason(skip)) > 20, skip["check_id"]
    skipped = {s["check_id"] for s in skips(reports)}
    assert skipped <= {"CKV_K8S_21", "CKV_K8S_40", "CKV_K8S_43"}, skipped
