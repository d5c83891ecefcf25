"""The GitHub workflow, the Make fragment and the Debian packages CI installs for these tests."""

from __future__ import annotations

import re
import subprocess

from tests.deploy.support import APT_PACKAGES, DEPLOY, ROOT, WORKFLOW, check, load_yaml, tool


def steps(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def make_targets() -> set[str]:
    proc = subprocess.run(["make", "-pq", "-f", "Makefile"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    return set(re.findall(r"^([a-zA-Z][\w-]*):", proc.stdout, re.M))


def test_workflow_matches_the_github_workflow_schema():
    validator = tool("check-jsonschema", "pip install check-jsonschema (pyproject's test extra)")
    check([validator, "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)])


def test_cpu_job_installs_the_listed_packages_and_runs_make_test():
    job = load_yaml(WORKFLOW)["jobs"]["test"]
    assert job["runs-on"].startswith("ubuntu-")
    run = steps(job)
    assert "sudo make system-deps" in run  # installs .ci/apt-packages.txt (make test alone needs root)
    assert re.search(r"^make test$", run, re.M)
    assert job["timeout-minutes"] <= 90


def test_gpu_job_runs_on_a_self_hosted_gpu_runner_and_never_for_pull_requests():
    job = load_yaml(WORKFLOW)["jobs"]["gpu"]
    assert {"self-hosted", "gpu"} <= set(job["runs-on"])
    assert "pull_request" not in job["if"] and job["needs"] == "test"
    run = steps(job)
    assert "make docker-export" in run and "make gpu-smoke" in run


def test_every_make_target_the_workflow_calls_exists():
    jobs = load_yaml(WORKFLOW)["jobs"].values()
    called = set().union(*(re.findall(r"\bmake ([a-z][\w-]*)", steps(job)) for job in jobs))
    assert called >= {"system-deps", "test", "docker-export", "gpu-smoke"}
    assert called <= make_targets(), called - make_targets()


def test_every_deploy_target_has_help_text():
    text = (DEPLOY / "deploy.mk").read_text()
    phony = set(re.search(r"^\.PHONY: (.+)$", text, re.M).group(1).split())
    helped = set(re.findall(r"^([\w-]+):.*## ", text, re.M))
    assert phony == helped
    assert phony <= make_targets(), "the Makefile does not include deploy/deploy.mk"


def test_docker_export_wraps_make_export_target_gpu_on_all_gpus():
    dry_run = " ".join(check(["make", "-n", "--no-print-directory", "docker-export"]).replace("\\\n", " ").split())
    assert "docker run --gpus all" in dry_run
    assert "make -o /opt/venv/.installed export TARGET=gpu VENV=/opt/venv" in dry_run


def test_ci_installs_prometheus_for_promtool_and_the_live_scrape():
    packages = {line.split("#")[0].strip() for line in APT_PACKAGES.read_text().splitlines()}
    assert "prometheus" in packages
