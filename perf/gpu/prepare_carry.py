"""Build, here and at no device time, what a GPU device call carries for Triton on the GPU (docs/GPU.md, step 0).

    python -m perf.gpu.prepare_carry [--artifacts artifacts] [--dest build/gpu-carry]
    python3 -m perf.gpu.prepare_carry --unpack /tmp/site --stub-site /tmp/stubnp      # on the GPU machine

pip downloads the pinned wheels (CPython 3.12, manylinux x86-64: the GPU image's Python) into
build/gpu-downloads/; this writes what docs/GPU.md lists and fails when it and the working tree exceed the
device call's 64 MiB. `--unpack` does what `pip install --no-deps --target` would for the two wheels: the
server into SITE (put it on PYTHONPATH), numpy into --stub-site (give it to `perf.gpu.serve --stub-site`).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from models import spec

LIMIT = 64 * 2**20
WHEELS = {
    "pytriton": ("nvidia-pytriton==0.7.0", "nvidia_pytriton-0.7.0-*.whl"),
    "tritonclient": ("tritonclient==2.51.0", "tritonclient-2.51.0-*.whl"),
    "numpy": ("numpy==1.26.4", "numpy-1.26.4-cp312-*.whl"),
}
PLATFORMS = tuple(f"manylinux{v}_x86_64" for v in ("_2_35", "_2_28", "_2_17", "2014", "1"))
PYTHON = "3.12"  # the GPU image's python3 (KINDS.md)
SMALL_CHECKPOINTS = ("nhits", "reservoir", "forecast_blend")
PYTRITON_TAR = "pytriton-0.7.0-py312.tar.xz"


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def download(downloads: Path) -> dict[str, Path]:
    downloads.mkdir(parents=True, exist_ok=True)
    found = {}
    for key, (requirement, pattern) in WHEELS.items():
        if not (matches := sorted(downloads.glob(pattern))):
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
            cmd += ["--python-version", PYTHON, "--implementation", "cp", "-d", str(downloads)]
            cmd += [arg for plat in PLATFORMS for arg in ("--platform", plat)]
            print("+", " ".join(cmd + [requirement]), flush=True)
            subprocess.run(cmd + [requirement], check=True)
            matches = sorted(downloads.glob(pattern))
        if len(matches) != 1:
            raise RuntimeError(f"expected one {pattern} in {downloads}, found {[m.name for m in matches]}")
        found[key] = matches[0]
    return found


def keep_member(name: str) -> bool:
    """The wheel's files that a server under CPython 3.12 needs."""
    if "/python_backend_stubs/" in name and f"/python_backend_stubs/{PYTHON}/" not in name:
        return False
    return not name.startswith("nvidia_pytriton.libs/libpython3")


def slim_pytriton(wheel: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel) as zf, tarfile.open(out, "w:xz", preset=6) as tar:
        for info in zf.infolist():
            if info.is_dir() or not keep_member(info.filename):
                continue
            data = zf.read(info)
            member = tarfile.TarInfo(info.filename)
            member.size = len(data)
            member.mode = 0o755 if (info.external_attr >> 16) & 0o111 else 0o644
            member.mtime = 0
            tar.addfile(member, io.BytesIO(data))


def perf_analyzer(wheel: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith("/bin/perf_analyzer"))
        out.write_bytes(lzma.compress(zf.read(name), preset=6))


def tree_bytes(root: Path) -> int:
    """Tracked plus untracked-not-ignored files: what a device call sends besides the carry."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True, check=True
    ).stdout
    return sum((root / p).stat().st_size for p in out.decode().split("\0") if p and (root / p).is_file())


def unpack(carry: Path, site_dir: Path, stub_site: Path | None) -> None:
    """On the GPU machine: the server into site_dir, numpy < 2 for the stub into stub_site."""
    tar = carry / PYTRITON_TAR
    if not tar.is_file():
        raise FileNotFoundError(f"{tar} is missing: run `python -m perf.gpu.prepare_carry` where pip works")
    site_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar) as t:
        t.extractall(site_dir, filter="data")
    if stub_site is not None:
        wheels = sorted(carry.glob(WHEELS["numpy"][1]))
        if len(wheels) != 1:
            raise FileNotFoundError(f"expected one {WHEELS['numpy'][1]} in {carry}")
        stub_site.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extractall(stub_site)
    print(f"unpacked {tar.name} into {site_dir}" + (f", {wheels[0].name} into {stub_site}" if stub_site else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", type=Path, default=spec.ROOT / "build" / "gpu-carry", help="the folder to carry")
    p.add_argument("--downloads", type=Path, default=spec.ROOT / "build" / "gpu-downloads")
    p.add_argument("--artifacts", type=Path, help="copy checkpoints/{nhits,reservoir,forecast_blend}.pt from here")
    p.add_argument("--unpack", type=Path, metavar="SITE", help="GPU machine: unpack the carried server into SITE")
    p.add_argument("--stub-site", type=Path, help="with --unpack: unpack the carried numpy wheel here")
    args = p.parse_args(argv)
    if args.unpack is not None:
        try:
            unpack(args.dest, args.unpack, args.stub_site)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.artifacts is not None and not (args.artifacts / "checkpoints").is_dir():
        p.error(f"{args.artifacts}/checkpoints does not exist: run `make export` first or leave --artifacts out")

    wheels = download(args.downloads)
    args.dest.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"sources": {}, "files": {}}
    for wheel in wheels.values():
        manifest["sources"][wheel.name] = {"sha256": sha256(wheel), "bytes": wheel.stat().st_size}

    tar = args.dest / PYTRITON_TAR
    if not tar.is_file():
        print(f"writing {tar} (xz, a few minutes on two cores)", flush=True)
        slim_pytriton(wheels["pytriton"], tar)
    pa = args.dest / "perf_analyzer.xz"
    if not pa.is_file():
        perf_analyzer(wheels["tritonclient"], pa)
    numpy_whl = args.dest / wheels["numpy"].name
    if not numpy_whl.is_file():
        shutil.copy2(wheels["numpy"], numpy_whl)
    if args.artifacts is not None:
        for name in SMALL_CHECKPOINTS:
            src = args.artifacts / "checkpoints" / f"{name}.pt"
            if src.is_file():
                (args.dest / "checkpoints").mkdir(exist_ok=True)
                shutil.copy2(src, args.dest / "checkpoints" / src.name)

    carried = sorted(f for f in args.dest.rglob("*") if f.is_file() and f.name != "MANIFEST.json")
    for f in carried:
        manifest["files"][str(f.relative_to(args.dest))] = {"sha256": sha256(f), "bytes": f.stat().st_size}
    carry = sum(f.stat().st_size for f in carried)
    tree = tree_bytes(spec.ROOT)
    manifest["carry_bytes"], manifest["tree_bytes"], manifest["limit_bytes"] = carry, tree, LIMIT
    (args.dest / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for name, f in manifest["files"].items():
        print(f"  {f['bytes'] / 2**20:7.2f} MiB  {name}")
    total = carry + tree
    print(f"carry {carry / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = {total / 2**20:.1f} MiB of 64 MiB")
    if total > LIMIT:
        print("error: over the device call's limit: leave out --artifacts or carry in two calls (docs/GPU.md)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
