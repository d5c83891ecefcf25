"""perf.gpu.prepare_carry builds the device call's carry from the pinned wheels and unpacks it (stand-in wheels here:
the real ones come from pip on the day of a GPU session)."""

from __future__ import annotations

import json
import lzma
import tarfile
import zipfile
from pathlib import Path

from perf.gpu import prepare_carry


def wheel(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o755 if "/bin/" in name else 0o644) << 16
            zf.writestr(info, data)


def test_the_carry_keeps_what_python_3_12_needs_and_unpacks_on_the_gpu_side(tmp_path: Path):
    downloads, dest = tmp_path / "downloads", tmp_path / "carry"
    downloads.mkdir()
    stubs = "pytriton/tritonserver/python_backend_stubs"
    wheel(
        downloads / "nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl",
        {
            "pytriton/tritonserver/bin/tritonserver": b"server",
            f"{stubs}/3.12/triton_python_backend_stub": b"stub 3.12",
            f"{stubs}/3.10/triton_python_backend_stub": b"stub 3.10",
            "nvidia_pytriton.libs/libpython3-1a2b.so.1.0": b"libpython",
            "nvidia_pytriton.libs/libcudart-1a2b.so.12": b"cudart",
        },
    )
    wheel(downloads / "tritonclient-2.51.0-py3-none-manylinux1_x86_64.whl", {"tritonclient/bin/perf_analyzer": b"pa"})
    wheel(downloads / "numpy-1.26.4-cp312-cp312-manylinux_2_17_x86_64.whl", {"numpy/__init__.py": b""})

    assert prepare_carry.main(["--dest", str(dest), "--downloads", str(downloads)]) == 0
    with tarfile.open(dest / prepare_carry.PYTRITON_TAR) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {
        "pytriton/tritonserver/bin/tritonserver",
        f"{stubs}/3.12/triton_python_backend_stub",
        "nvidia_pytriton.libs/libcudart-1a2b.so.12",
    }
    assert members["pytriton/tritonserver/bin/tritonserver"].mode == 0o755
    assert lzma.decompress((dest / "perf_analyzer.xz").read_bytes()) == b"pa"
    manifest = json.loads((dest / "MANIFEST.json").read_text())
    assert len(manifest["sources"]) == 3 and manifest["carry_bytes"] + manifest["tree_bytes"] <= manifest["limit_bytes"]

    site, stub = tmp_path / "site", tmp_path / "stubnp"
    assert prepare_carry.main(["--dest", str(dest), "--unpack", str(site), "--stub-site", str(stub)]) == 0
    assert (site / "pytriton/tritonserver/bin/tritonserver").read_bytes() == b"server"
    assert (stub / "numpy" / "__init__.py").is_file()
