"""docker/triton-serve, the serving image's entry point, run for real without Docker.

`tritonserver` is a tiny stand-in on PATH that records its arguments and environment: what is under
test is the wrapper's logic (which repository it verifies, when it refuses, what it execs), not Triton,
which the rest of the suite starts for real. The wrapper runs the repository's repository/integrity.py
(TRITON_INTEGRITY_PY) with the virtualenv's python3, over a copy of one model of the test repository.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from repository import integrity
from serving import server
from tests.deploy.support import ENTRYPOINT_SCRIPT, PRODUCTION_FLAGS, ROOT

KEY = "k3y-for-the-wrapper-test_0123456789"
FAKE_TRITONSERVER = """#!/bin/sh
printf '%s\\n' "$@" > "$FAKE_ARGV"
echo "${TRITON_ADMIN_KEY-unset} ${TRITON_ADMIN_KEY_FILE-unset}" > "$FAKE_ENV"
"""
FLAGS = ["--metrics-config=summary_latencies=true", "--allow-metrics=true"]


def restricted_flags(key: str = KEY) -> list[str]:
    value = f"{server.RESTRICTED}:{server.ADMIN_HEADER}={key}"
    return [f"--http-restricted-api={value}", f"--grpc-restricted-protocol={value}"]


@pytest.fixture
def models(repo: Path, tmp_path: Path) -> Path:
    """One model of the test repository (ONNX + INT8 + provenance records) and its integrity.json."""
    out = tmp_path / "models"
    shutil.copytree(repo / "forecast_blend", out / "forecast_blend")
    integrity.write_manifest(out)
    assert integrity.verify_repository(out) == []
    return out


class Wrapper:
    def __init__(self, tmp_path: Path):
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        fake = bin_dir / "tritonserver"
        fake.write_text(FAKE_TRITONSERVER)
        fake.chmod(0o755)
        self.argv_file = tmp_path / "tritonserver.argv"
        self.env_file = tmp_path / "tritonserver.env"
        # nothing inherited (a developer's own TRITON_ADMIN_KEY must not leak in); python3 = the venv's
        self.env = {
            "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
            "TRITON_INTEGRITY_PY": str(ROOT / "repository" / "integrity.py"),
            "FAKE_ARGV": str(self.argv_file),
            "FAKE_ENV": str(self.env_file),
        }

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(ENTRYPOINT_SCRIPT), *args],
            env=self.env | env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    @property
    def called(self) -> bool:
        return self.argv_file.exists()

    def argv(self) -> list[str]:
        return self.argv_file.read_text().splitlines()

    def server_env_key(self) -> str:
        return self.env_file.read_text().strip()


@pytest.fixture
def wrapper(tmp_path: Path) -> Wrapper:
    return Wrapper(tmp_path)


def test_a_verified_repository_starts_tritonserver_with_the_restricted_apis_and_the_key(wrapper, models):
    proc = wrapper(f"--model-repository={models}", *FLAGS, TRITON_ADMIN_KEY=KEY)
    assert proc.returncode == 0, proc.stderr
    assert wrapper.argv() == [f"--model-repository={models}", *FLAGS, *restricted_flags()]
    assert re.search(r"\d+ file\(s\) verified", proc.stdout), proc.stdout
    assert KEY not in proc.stdout + proc.stderr, "the key is never printed"
    # the server and its python backend stubs do not inherit the key
    assert wrapper.server_env_key() == "unset unset"


def test_the_production_flags_pass_through_unchanged(wrapper, models):
    """The image's CMD flags (compose and Kubernetes repeat them), the repository in the space-separated form."""
    flags = [f for f in PRODUCTION_FLAGS if not f.startswith("--model-repository=")]
    proc = wrapper("--model-repository", str(models), *flags, "--model-config-name=cpu", TRITON_ADMIN_KEY=KEY)
    assert proc.returncode == 0, proc.stderr
    assert wrapper.argv() == ["--model-repository", str(models), *flags, "--model-config-name=cpu", *restricted_flags()]


def test_the_key_can_come_from_a_file(wrapper, models, tmp_path):
    key_file = tmp_path / "admin.key"
    key_file.write_text(f"{KEY}\n")
    proc = wrapper(f"--model-repository={models}", TRITON_ADMIN_KEY_FILE=str(key_file))
    assert proc.returncode == 0, proc.stderr
    assert wrapper.argv()[-2:] == restricted_flags()
    assert wrapper.server_env_key() == "unset unset", "the backends see neither the key nor where it is"


@pytest.mark.parametrize("env", [{}, {"TRITON_ADMIN_KEY": ""}], ids=["unset", "empty"])
def test_without_a_key_it_refuses_to_start(wrapper, models, env):
    proc = wrapper(f"--model-repository={models}", *FLAGS, **env)
    assert proc.returncode != 0
    assert "TRITON_ADMIN_KEY" in proc.stderr and "refusing to start" in proc.stderr
    assert not wrapper.called


@pytest.mark.parametrize("content", ["", "\n  \n", "two words\n"], ids=["empty", "blank", "with-a-space"])
def test_an_unusable_key_file_refuses_to_start(wrapper, models, tmp_path, content):
    key_file = tmp_path / "admin.key"
    key_file.write_text(content)
    proc = wrapper(f"--model-repository={models}", TRITON_ADMIN_KEY_FILE=str(key_file), TRITON_ADMIN_KEY=KEY)
    assert proc.returncode != 0 and "refusing to start" in proc.stderr
    assert not wrapper.called
    missing = wrapper(f"--model-repository={models}", TRITON_ADMIN_KEY_FILE=str(tmp_path / "absent.key"))
    assert missing.returncode != 0 and "TRITON_ADMIN_KEY_FILE" in missing.stderr
    assert not wrapper.called


@pytest.mark.parametrize("form", ["equals", "separate"])
@pytest.mark.parametrize("damage", ["tampered", "unrecorded"])
def test_an_artifact_that_fails_verification_refuses_the_start_naming_the_file(wrapper, models, form, damage):
    if damage == "tampered":
        bad = models / "forecast_blend" / "1" / "model.onnx"
        bad.write_bytes(bad.read_bytes() + b"\0")
    else:  # a file the export never recorded
        bad = models / "forecast_blend" / "1" / "extra.onnx"
        bad.write_bytes(b"not an export")
    args = [f"--model-repository={models}"] if form == "equals" else ["--model-repository", str(models)]
    proc = wrapper(*args, *FLAGS, TRITON_ADMIN_KEY=KEY)
    assert proc.returncode != 0
    assert str(bad) in proc.stderr
    assert "refusing to start" in proc.stderr
    assert not wrapper.called
    assert KEY not in proc.stdout + proc.stderr


def test_every_model_repository_is_verified(wrapper, models, tmp_path):
    second = tmp_path / "second"
    shutil.copytree(models, second)
    bad = second / "forecast_blend" / "1" / "model.int8.onnx"
    bad.write_bytes(b"swapped")
    proc = wrapper(f"--model-repository={models}", f"--model-repository={second}", TRITON_ADMIN_KEY=KEY)
    assert proc.returncode != 0 and str(bad) in proc.stderr
    assert not wrapper.called


def test_a_missing_repository_or_integrity_check_refuses_to_start(wrapper, models, tmp_path):
    proc = wrapper(f"--model-repository={tmp_path / 'absent'}", TRITON_ADMIN_KEY=KEY)
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    proc = wrapper(f"--model-repository={models}", TRITON_ADMIN_KEY=KEY, TRITON_INTEGRITY_PY=str(tmp_path / "no.py"))
    assert proc.returncode != 0 and "cannot verify" in proc.stderr
    assert not wrapper.called


def test_restricted_api_flags_of_the_caller_are_refused_without_echoing_them(wrapper, models):
    other = "model-repository:triton-admin-key=another-key"
    proc = wrapper(f"--model-repository={models}", f"--http-restricted-api={other}", TRITON_ADMIN_KEY=KEY)
    assert proc.returncode != 0 and "--http-restricted-api" in proc.stderr
    assert "another-key" not in proc.stderr
    assert not wrapper.called
