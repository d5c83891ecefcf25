"""torch_py: a Python-based Triton backend that runs the project's PyTorch models, on the GPU with CUDA graphs.

TensorRT and ONNX Runtime GPU are not on the lent GPU machines; this gives Triton a GPU execution path there.
`perf.gpu.serve` installs this file as `<backend-directory>/torch_py/model.py`; `backend: "torch_py"` selects
it (perf/gpu/model_repository_overlay/). It loads `<version>/checkpoints/<model>.pt` (the weights `make export`
exports to ONNX). KIND_GPU: with `cuda_graphs` on, one CUDA graph per power-of-two batch bucket up to
max_batch_size, captured in `initialize`; a batch of n rows runs in the smallest bucket >= n. KIND_CPU: eager
PyTorch with `num_threads` threads. Each request is validated on its own (dtype, shape, NaN / Inf, ids outside
the table); a bad one gets a TritonError while its batch-mates run. Parameters: `precision` (fp32 | fp16 |
bf16: weights and arithmetic; outputs keep the config dtype), `cuda_graphs`, `num_threads`, `project_root`
(the directory holding `models`, prepended to sys.path).
"""

from __future__ import annotations

import json
import logging
import os
import sys

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

log = logging.getLogger("torch_py")

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _error(message: str) -> pb_utils.InferenceResponse:
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    err = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(error=err)


def _param(config: dict, key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", default)
    return value if value != "" else default


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.config = json.loads(args["model_config"])
        self.name = args["model_name"]
        root = _param(self.config, "project_root", "")
        if root and root not in sys.path:
            sys.path.insert(0, root)
        try:
            from models import registry, spec
            from perf.gpu import weights
        except ImportError as exc:
            raise pb_utils.TritonModelException(
                f"{self.name}: cannot import the project's models package ({exc}); set the config parameter "
                "project_root to the repository root"
            ) from exc

        precision = _param(self.config, "precision", "fp32").lower()
        if precision not in PRECISIONS:
            raise pb_utils.TritonModelException(
                f"{self.name}: precision={precision!r} is not one of {list(PRECISIONS)}"
            )
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        ckpt = registry.checkpoint_path(version_dir, self.name)
        if not os.path.isfile(ckpt):
            raise pb_utils.TritonModelException(
                f"{self.name}: {ckpt} does not exist; assemble the repository with `python -m perf.gpu.repository`"
            )
        on_gpu = args.get("model_instance_kind") == "GPU"
        if on_gpu and not torch.cuda.is_available():
            raise pb_utils.TritonModelException(f"{self.name}: KIND_GPU instance but torch sees no CUDA device")
        self.device = torch.device(f"cuda:{args['model_instance_device_id']}" if on_gpu else "cpu")
        if on_gpu:
            torch.cuda.set_device(self.device)  # graph capture and the default stream follow the current device
        else:
            torch.set_num_threads(max(1, int(_param(self.config, "num_threads", "1"))))

        dtype = PRECISIONS[precision]
        module = registry.load_model(self.name, version_dir).to(dtype).to(self.device)
        self.runner = weights.Runner(module, dtype, None, self.device.type)  # float outputs come back as float32
        self.max_batch = int(self.config.get("max_batch_size", 0)) or 1
        self.inputs = [
            (t["name"], pb_utils.triton_string_to_numpy(t["data_type"]), [int(d) for d in t["dims"]])
            for t in self.config["input"]
        ]
        self.outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in self.config["output"]]
        want_in = [t.name for t in spec.MODELS[self.name].inputs]
        self.output_order = [t.name for t in spec.MODELS[self.name].outputs]  # the order the module returns them in
        if [n for n, _, _ in self.inputs] != want_in or sorted(n for n, _ in self.outputs) != sorted(self.output_order):
            raise pb_utils.TritonModelException(
                f"{self.name}: config tensors do not match models/spec.py ({want_in} -> {self.output_order})"
            )
        self.ranges = {"user_id": (0, int(module.table.shape[0]))} if self.name == "user_embedding" else {}

        self.graphs: dict[int, tuple] = {}
        if on_gpu and _param(self.config, "cuda_graphs", "true").lower() in ("1", "true", "yes", "on"):
            pool = torch.cuda.graph_pool_handle()
            buckets = {min(1 << i, self.max_batch) for i in range(self.max_batch.bit_length() + 1)}
            with torch.inference_mode():
                for b in sorted(buckets, reverse=True):  # largest first: later captures reuse its pool memory
                    static_in = [  # positive windows; id 0 always exists
                        torch.from_numpy(np.full((b, *dims), 1 if np.dtype(dt).kind == "f" else 0, dt)).to(self.device)
                        for _, dt, dims in self.inputs
                    ]
                    self.graphs[b] = (*weights.capture(self.runner, static_in, pool), static_in)
            torch.cuda.synchronize(self.device)
        log.info(
            "%s: %s on %s, %s, CUDA graphs %s", self.name, ckpt, self.device, precision, sorted(self.graphs) or "off"
        )

    def _run(self, arrays: dict) -> list[np.ndarray]:
        n = next(iter(arrays.values())).shape[0]
        with torch.inference_mode():
            bucket = min((b for b in self.graphs if b >= n), default=None)
            if bucket is None:
                out = self.runner(*(torch.from_numpy(arrays[name]).to(self.device) for name, _, _ in self.inputs))
            else:
                graph, static_out, static_in = self.graphs[bucket]
                for t, (name, _, _) in zip(static_in, self.inputs, strict=True):
                    t[:n].copy_(torch.from_numpy(arrays[name]))
                graph.replay()
                out = [o[:n] for o in static_out]
            return [o.cpu().numpy() for o in out]

    def _check(self, arrays: dict) -> str | None:
        for name, dtype, dims in self.inputs:
            a = arrays[name]
            if a.dtype != dtype:
                return f"input '{name}' has dtype {a.dtype}, expected {np.dtype(dtype).name}"
            if list(a.shape[1:]) != dims or a.shape[0] == 0:
                return f"input '{name}' has shape {list(a.shape)}, expected [batch >= 1, {', '.join(map(str, dims))}]"
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                return f"input '{name}' contains NaN or Inf (batch row {int(np.argwhere(~np.isfinite(a))[0][0])})"
            if name in self.ranges:
                lo, hi = self.ranges[name]
                bad = (a < lo) | (a >= hi)
                if bad.any():
                    return f"input '{name}' value {int(a[bad][0])} is out of range [{lo}, {hi})"
        return None

    def execute(self, requests):
        responses: list = [None] * len(requests)
        good, feeds = [], []
        for i, request in enumerate(requests):
            feed = {}
            for name, _, _ in self.inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    feed[name] = tensor.as_numpy()
            missing = [n for n, _, _ in self.inputs if n not in feed]
            problem = f"missing input tensor(s) {missing}" if missing else self._check(feed)
            if problem is not None:
                responses[i] = _error(f"{self.name}: {problem}")
                continue
            good.append(i)
            feeds.append(feed)
        if not good:
            return responses

        sizes = [f[self.inputs[0][0]].shape[0] for f in feeds]
        batch = feeds[0] if len(feeds) == 1 else {n: np.concatenate([f[n] for f in feeds]) for n, _, _ in self.inputs}
        try:
            results = []
            for lo in range(0, sum(sizes), self.max_batch):  # one request may not exceed max_batch_size, many may
                chunk = {k: np.ascontiguousarray(v[lo : lo + self.max_batch]) for k, v in batch.items()}
                results.append(self._run(chunk))
            outs = [np.concatenate(parts) for parts in zip(*results, strict=True)]
        except Exception as exc:  # one failed execution fails its requests, not the server
            for i in good:
                responses[i] = _error(f"{self.name}: PyTorch failed: {exc}")
            return responses
        by_name = dict(zip(self.output_order, outs, strict=True))
        offsets = np.cumsum([0, *sizes])
        for k, i in enumerate(good):
            lo, hi = offsets[k], offsets[k + 1]
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(by_name[name][lo:hi]).astype(dtype, copy=False))
                for name, dtype in self.outputs
            ]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self) -> None:
        self.graphs.clear()
