"""Build Triton's own ONNX Runtime backend (r24.10, CPU only) against this virtualenv's onnxruntime wheel.

    python -m serving.ort_backend              # build when missing or out of date (`make backend` runs this)
    python -m serving.ort_backend --check      # exit 1, saying why, unless a current build is there
    python -m serving.ort_backend --force      # rebuild

The nvidia-pytriton wheel ships tritonserver 2.51.0 without an ONNX Runtime backend. This builds
`libtriton_onnxruntime.so` from `triton-inference-server/onnxruntime_backend` at `r24.10` (the release
of that server, backend API 1.19) with `-DTRITON_ENABLE_GPU=OFF`, linked to the `libonnxruntime.so`
inside the pinned onnxruntime wheel, into `build/triton-backends/onnxruntime/` (git-ignored), laid out
as a Triton backend folder: the library, `libonnxruntime.so.1` and `libtritonserver.so` links (the
wheel names its server library `libtritonserver-<hash>.so`; the backend's RUNPATH is `$ORIGIN`), the
license, `build.json` (what it was built from) and `build.log`.

Sources, first found wins:
1. `$TRITON_VENDOR_DIR` (`.ci/run` sets it when an offline copy sits beside the checkout):
   `triton-r24.10/{onnxruntime_backend,core,common,backend}.tar.gz` (git archives of r24.10) and
   `onnxruntime-*/include/onnxruntime_c_api.h`. Fully offline (FETCHCONTENT_FULLY_DISCONNECTED).
2. Upstream (internet access to github.com): `git clone -b r24.10` of onnxruntime_backend, CMake
   FetchContent of core/common/backend at r24.10, and the C API header of the wheel's ONNX Runtime
   release (`onnxruntime-linux-x64-<version>.tgz`).

It rebuilds only when the key changes: the onnxruntime version and library hash, the source hashes,
this file. The backend binds the exact ONNX Runtime it was linked against (`VERS_1.32.0`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from common.files import sha256_file

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "triton-backends" / "onnxruntime"
LIBRARY = "libtriton_onnxruntime.so"
TRITON_BRANCH = "r24.10"
REPOS = ("onnxruntime_backend", "core", "common", "backend")
UPSTREAM = "https://github.com/triton-inference-server"
ORT_RELEASE = "https://github.com/microsoft/onnxruntime/releases/download/v{v}/onnxruntime-linux-x64-{v}.tgz"
# Debian package that provides each build input (all in .ci/apt-packages.txt).
TOOLS = {"cmake": "cmake", "ninja": "ninja-build", "g++": "g++", "make": "make"}
HEADERS = {Path("/usr/include/rapidjson/document.h"): "rapidjson-dev"}
GOOGLETEST = Path("/usr/src/googletest")  # `common` r24.10 always configures its tests


class BuildError(RuntimeError):
    """One line that says what is missing or what failed."""


@dataclass(frozen=True)
class Wheel:
    version: str
    library: Path  # libonnxruntime.so.<version> inside the onnxruntime wheel
    server_library: Path  # libtritonserver-<hash>.so inside the nvidia-pytriton wheel


def wheel() -> Wheel:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BuildError("onnxruntime is not installed in this Python: run `make venv`") from exc
    capi = Path(onnxruntime.__file__).resolve().parent / "capi"
    libs = sorted(capi.glob("libonnxruntime.so.*"))
    if not libs:
        raise BuildError(f"the onnxruntime wheel has no libonnxruntime.so.* under {capi}")
    try:
        import pytriton
    except ImportError as exc:
        raise BuildError("nvidia-pytriton is not installed in this Python: run `make venv`") from exc
    libdir = Path(pytriton.__file__).resolve().parent.parent / "nvidia_pytriton.libs"
    servers = sorted(libdir.glob("libtritonserver*.so"))
    if not servers:
        raise BuildError(f"no libtritonserver*.so in {libdir}: reinstall nvidia-pytriton==0.7.0")
    return Wheel(onnxruntime.__version__, libs[-1], servers[0])


def find_vendor() -> Path | None:
    """The offline sources named by TRITON_VENDOR_DIR, or None (then the build takes them from upstream)."""
    if not os.environ.get("TRITON_VENDOR_DIR"):
        return None
    d = Path(os.environ["TRITON_VENDOR_DIR"])
    if all((d / f"triton-{TRITON_BRANCH}" / f"{r}.tar.gz").is_file() for r in REPOS) and vendor_header(d):
        return d.resolve()
    raise BuildError(
        f"TRITON_VENDOR_DIR={d} lacks triton-{TRITON_BRANCH}/{{{','.join(REPOS)}}}.tar.gz or "
        "onnxruntime-*/include/onnxruntime_c_api.h: fix it, or unset it to build from upstream"
    )


def vendor_header(vendor: Path) -> Path | None:
    headers = sorted(vendor.glob("onnxruntime-*/include/onnxruntime_c_api.h"))
    return headers[-1].parent if headers else None


def build_key(w: Wheel, vendor: Path | None) -> dict:
    """Everything the built library depends on; a rebuild happens when any of it changes."""
    if vendor is not None:
        sources = {r: sha256_file(vendor / f"triton-{TRITON_BRANCH}" / f"{r}.tar.gz") for r in REPOS}
        sources["onnxruntime_c_api.h"] = sha256_file(vendor_header(vendor) / "onnxruntime_c_api.h")
    else:
        sources = {r: f"{UPSTREAM}/{r}@{TRITON_BRANCH}" for r in REPOS}
        sources["onnxruntime_c_api.h"] = ORT_RELEASE.format(v=w.version)
    return {
        "triton_branch": TRITON_BRANCH,
        "onnxruntime": w.version,
        "onnxruntime_library_sha256": sha256_file(w.library),
        "server_library": w.server_library.name,
        "sources": sources,
        "builder_sha256": sha256_file(Path(__file__)),
    }


def current(out: Path, key: dict) -> str | None:
    """None when `out` holds a build for `key`, else why not."""
    record = out / "build.json"
    if not (out / LIBRARY).is_file() or not record.is_file():
        return f"no backend built in {out}"
    built = json.loads(record.read_text()).get("key")
    if built != key:
        changed = sorted(k for k in key if (built or {}).get(k) != key[k])
        return f"the build in {out} is out of date ({', '.join(changed)} changed)"
    for link in ("libonnxruntime.so.1", "libtritonserver.so"):
        if not (out / link).exists():
            return f"{out / link} is missing or dangling"
    return None


def check_tools() -> str:
    """The generator to use; BuildError naming the first missing tool and its Debian package."""
    for tool in ("cmake", "g++"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} is not installed: install the Debian package {TOOLS[tool]} (`make system-deps`)")
    for header, package in HEADERS.items():
        if not header.is_file():
            raise BuildError(f"{header} is missing: install the Debian package {package} (`make system-deps`)")
    if not (GOOGLETEST / "CMakeLists.txt").is_file():
        raise BuildError(f"{GOOGLETEST} is missing: install the Debian package googletest (`make system-deps`)")
    if shutil.which("ninja"):
        return "Ninja"
    if shutil.which("make"):
        return "Unix Makefiles"
    raise BuildError("neither ninja nor make is installed: install the Debian package ninja-build")


def run(cmd: list[str], logfile, cwd: Path | None = None) -> None:
    logfile.write(f"$ {' '.join(cmd)}\n".encode())
    logfile.flush()
    code = subprocess.run(cmd, stdout=logfile, stderr=subprocess.STDOUT, cwd=cwd).returncode
    if code != 0:
        raise BuildError(f"`{' '.join(cmd[:2])}` failed with exit code {code}: see {logfile.name}")


def fetch_header(version: str, dest: Path) -> Path:
    url = ORT_RELEASE.format(v=version)
    archive = dest / "ort.tgz"
    try:
        urllib.request.urlretrieve(url, archive)
    except OSError as exc:
        raise BuildError(
            f"no offline sources (set TRITON_VENDOR_DIR, see serving/ort_backend.py) and {url} "
            f"cannot be downloaded: {exc}"
        ) from exc
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return next(dest.glob("onnxruntime-linux-x64-*/include"))


def configure_args(src: Path, build: Path, generator: str, include: Path, libdir: Path, vendor_src: Path | None):
    args = [
        "cmake",
        "-S",
        str(src / "onnxruntime_backend"),
        "-B",
        str(build),
        "-G",
        generator,
        "-DCMAKE_BUILD_TYPE=Release",
        "-DTRITON_ENABLE_GPU=OFF",
        "-DTRITON_ENABLE_ONNXRUNTIME_TENSORRT=OFF",
        "-DTRITON_ENABLE_ONNXRUNTIME_OPENVINO=OFF",
        "-DTRITON_CORE_HEADERS_ONLY=ON",
        f"-DTRITON_ONNXRUNTIME_INCLUDE_PATHS={include}",
        f"-DTRITON_ONNXRUNTIME_LIB_PATHS={libdir}",
        f"-DFETCHCONTENT_SOURCE_DIR_GOOGLETEST={GOOGLETEST}",
    ]
    if vendor_src is not None:
        args.append("-DFETCHCONTENT_FULLY_DISCONNECTED=ON")
        args += [f"-DFETCHCONTENT_SOURCE_DIR_REPO-{r.upper()}={vendor_src / r}" for r in ("common", "core", "backend")]
    else:
        args += [f"-DTRITON_{r.upper()}_REPO_TAG={TRITON_BRANCH}" for r in ("common", "core", "backend")]
    return args


def build(out: Path = OUT, force: bool = False) -> Path:
    """Build (or keep) the backend in `out`; returns `out`. A failed build leaves `out` as it was."""
    w = wheel()
    vendor = find_vendor()
    key = build_key(w, vendor)
    why = current(out, key)
    if why is None and not force:
        log.info("ONNX Runtime backend is current in %s (onnxruntime %s)", out, w.version)
        return out
    generator = check_tools()
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.parent / "onnxruntime-build.log"
    log.info(
        "%s: building the ONNX Runtime backend (%s, %s sources); log %s",
        why or "forced",
        TRITON_BRANCH,
        "offline" if vendor else "upstream",
        log_path,
    )
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".ort-backend-", dir=out.parent) as tmp, open(log_path, "wb") as logfile:
        tmp = Path(tmp)
        src = tmp / "src"
        src.mkdir()
        if vendor is not None:
            for r in REPOS:
                with tarfile.open(vendor / f"triton-{TRITON_BRANCH}" / f"{r}.tar.gz") as tar:
                    tar.extractall(src, filter="data")
            include = vendor_header(vendor)
        else:
            if shutil.which("git") is None:
                raise BuildError("git is not installed: install the Debian package git")
            run(
                [
                    "git",
                    "clone",
                    "--depth",
                    "1",
                    "-b",
                    TRITON_BRANCH,
                    f"{UPSTREAM}/onnxruntime_backend.git",
                    str(src / "onnxruntime_backend"),
                ],
                logfile,
            )
            include = fetch_header(w.version, tmp)
        libdir = tmp / "ortlib"
        libdir.mkdir()
        (libdir / "libonnxruntime.so").symlink_to(w.library)
        run(configure_args(src, tmp / "build", generator, include, libdir, src if vendor else None), logfile)
        run(
            [
                "cmake",
                "--build",
                str(tmp / "build"),
                "--target",
                "triton-onnxruntime-backend",
                "--parallel",
                str(os.cpu_count() or 2),
            ],
            logfile,
        )
        stage = tmp / "onnxruntime"
        stage.mkdir()
        shutil.copy2(tmp / "build" / LIBRARY, stage / LIBRARY)
        (stage / "libonnxruntime.so.1").symlink_to(w.library)
        (stage / "libtritonserver.so").symlink_to(w.server_library)
        shutil.copy2(src / "onnxruntime_backend" / "LICENSE", stage / "LICENSE")
        record = {
            "key": key,
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.monotonic() - t0, 1),
            "vendor": str(vendor) if vendor else None,
        }
        (stage / "build.json").write_text(json.dumps(record, indent=2) + "\n")
        old = tmp / "old"
        if out.exists():
            out.rename(old)
        stage.rename(out)
    shutil.copy2(log_path, out / "build.log")
    log.info("built %s in %.0f s", out / LIBRARY, time.monotonic() - t0)
    return out


def require(out: Path = OUT) -> Path:
    """The built backend folder, or BuildError saying why it is not usable and how to build it."""
    why = current(out, build_key(wheel(), find_vendor()))
    if why is not None:
        raise BuildError(f"{why}: run `make backend` (python -m serving.ort_backend)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=OUT, help=f"backend folder (default {OUT.relative_to(ROOT)})")
    p.add_argument("--check", action="store_true", help="only say whether a current build is there")
    p.add_argument("--force", action="store_true", help="rebuild even when current")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.check:
            require(args.out)
            print(f"ONNX Runtime backend is current: {args.out / LIBRARY}")
        else:
            build(args.out, args.force)
            print(f"ONNX Runtime backend: {args.out / LIBRARY}")
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
