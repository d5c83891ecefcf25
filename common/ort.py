"""ONNX Runtime sessions as every stage opens them."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def ort_session(path: Path, threads: int = 1) -> Any:
    """A CPU ONNX Runtime session. One thread by default: the 2-core machines are shared, and under load a
    second thread was measured slower than one (ORT and PyTorch alike)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
