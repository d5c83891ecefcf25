"""The ONNX Runtime backend build (serving/ort_backend.py): current after `make backend`, rebuilt when its
inputs change, a missing tool named in one line, offline and upstream source plans."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving import ort_backend


def test_make_backend_left_a_current_build_that_the_launcher_uses():
    out = ort_backend.require()
    assert (out / ort_backend.LIBRARY).is_file()
    # the wheel's libraries under the names the backend's NEEDED entries ask for ($ORIGIN runpath)
    assert (out / "libonnxruntime.so.1").resolve() == ort_backend.wheel().library
    assert (out / "libtritonserver.so").resolve() == ort_backend.wheel().server_library
    record = json.loads((out / "build.json").read_text())
    assert record["key"]["onnxruntime"] == ort_backend.wheel().version
    assert (out / "build.log").stat().st_size > 0 and (out / "LICENSE").is_file()
    readelf = shutil.which("readelf")
    if readelf:  # binutils: the library really links what the links provide
        needed = subprocess.run([readelf, "-d", str(out / ort_backend.LIBRARY)], capture_output=True, text=True).stdout
        assert "[libonnxruntime.so.1]" in needed and "[libtritonserver.so]" in needed and "ORIGIN" in needed


def test_a_changed_input_makes_the_build_out_of_date_and_names_it(tmp_path: Path):
    out = tmp_path / "onnxruntime"
    shutil.copytree(ort_backend.require(), out, symlinks=True)
    key = ort_backend.build_key(ort_backend.wheel(), ort_backend.find_vendor())
    assert ort_backend.current(out, key) is None
    newer = {**key, "onnxruntime": "9.9.9"}
    assert "onnxruntime changed" in ort_backend.current(out, newer)
    (out / "libtritonserver.so").unlink()
    assert "libtritonserver.so is missing" in ort_backend.current(out, key)
    with pytest.raises(ort_backend.BuildError, match="make backend"):
        ort_backend.require(tmp_path / "nothing-here")


def test_a_missing_tool_fails_the_build_in_one_line_naming_its_debian_package(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "serving.ort_backend", "--out", str(tmp_path / "out"), "--force"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ort_backend.ROOT,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == "error: cmake is not installed: install the Debian package cmake (`make system-deps`)"
    assert not (tmp_path / "out").exists(), "a failed build must leave nothing behind"


def test_every_build_tool_is_listed_for_system_deps():
    listed = {
        line.split("#")[0].strip()
        for line in (ort_backend.ROOT / ".ci" / "apt-packages.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    }
    wanted = {*ort_backend.TOOLS.values(), *ort_backend.HEADERS.values(), "googletest", "git"}
    assert wanted <= listed, wanted - listed


def test_offline_sources_build_disconnected_and_upstream_sources_fetch_r24_10(tmp_path: Path):
    offline = ort_backend.configure_args(
        tmp_path, tmp_path / "b", "Ninja", tmp_path / "inc", tmp_path / "lib", tmp_path
    )
    assert "-DFETCHCONTENT_FULLY_DISCONNECTED=ON" in offline
    assert f"-DFETCHCONTENT_SOURCE_DIR_REPO-CORE={tmp_path / 'core'}" in offline
    assert "-DTRITON_ENABLE_GPU=OFF" in offline and "-DTRITON_CORE_HEADERS_ONLY=ON" in offline
    upstream = ort_backend.configure_args(tmp_path, tmp_path / "b", "Ninja", tmp_path / "inc", tmp_path / "lib", None)
    assert "-DFETCHCONTENT_FULLY_DISCONNECTED=ON" not in upstream
    assert {f"-DTRITON_{r}_REPO_TAG=r24.10" for r in ("COMMON", "CORE", "BACKEND")} <= set(upstream)
    key = ort_backend.build_key(ort_backend.wheel(), None)
    assert key["sources"]["onnxruntime_c_api.h"].endswith(f"onnxruntime-linux-x64-{ort_backend.wheel().version}.tgz")
