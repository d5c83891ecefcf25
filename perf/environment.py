"""The machine and the versions a run was measured with (the report names them)."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("tritonclient", "nvidia-pytriton", "onnxruntime", "torch", "numpy", "nvidia-cuda-runtime-cu12")


def _proc(file: str, key: str) -> str | None:
    """The value after `key` in /proc/<file> (cpuinfo, meminfo), or None."""
    try:
        lines = Path("/proc", file).read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(key)), None)


def cpu_model() -> str:
    return _proc("cpuinfo", "model name") or platform.processor() or platform.machine() or "unknown"


def machine() -> dict:
    mem_kib = _proc("meminfo", "MemTotal:")
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": round(int(mem_kib.split()[0]) / 2**20, 1) if mem_kib else None,
        "kernel": platform.release(),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }


def versions(perf_analyzer: str | None = None) -> dict:
    out = {"python": sys.version.split()[0]}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out | ({"perf_analyzer": perf_analyzer} if perf_analyzer else {})
