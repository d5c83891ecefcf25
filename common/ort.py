"""ONNX Runtime sessions as every stage opens them."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def ort_session(path: Path, threads: int = 1, profile_prefix: str | None = None) -> Any:
    """A CPU ONNX Runtime session with the serving backend's options (sequential, all graph optimisations).
    One thread by default: on two shared cores a second thread was measured slower than one under load (ORT and
    PyTorch alike). `profile_prefix`: ONNX Runtime's profiler on, its file named from it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling, opts.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
