"""torch_py: a Python-based Triton backend that runs the project's PyTorch models, on the GPU with CUDA graphs.

The gpu target serves TensorRT plans, but TensorRT and ONNX Runtime GPU are not on the lent GPU
machines. This backend gives Triton a GPU execution path there: `perf.gpu.serve` installs this file
as `<backend-directory>/torch_py/model.py`, and `backend: "torch_py"` in a config selects it
(perf/gpu/model_repository_overlay/). It loads `<version>/checkpoints/<model>.pt` through
`models.registry.load_model` (the weights that `make export` exports to ONNX).

Per model instance:
- KIND_GPU: the module lives on `cuda:<device_id>`; with `cuda_graphs` on, one CUDA graph is captured
  per batch bucket (`graph_batch_sizes`, default powers of two up to max_batch_size) in `initialize`,
  and a dynamic batch of n rows is copied into the smallest bucket >= n, replayed, and sliced back;
- KIND_CPU (or no CUDA): plain eager PyTorch with `num_threads` threads, so the same configs and
  tests run on machines without a GPU.
Each request is validated on its own (dtype, shape, NaN / Inf, ids outside the table) and a bad one
is answered with a TritonError while its batch-mates run.

Parameters: `precision` = fp32 | fp16 | bf16 (weights and arithmetic; outputs keep the config dtype),
`cuda_graphs` = true | false, `graph_batch_sizes` = "1,2,4,...", `num_threads`, `project_root`
(the directory holding the `models` package, prepended to sys.path).
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

PRECISIONS = ("fp32", "fp16", "bf16")


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
        except ImportError as exc:
            raise pb_utils.TritonModelException(
                f"{self.name}: cannot import the project's models package ({exc}); set the config parameter "
                "project_root to the repository root"
            ) from exc

        precision = _param(self.config, "precision", "fp32").lower()
        if precision not in PRECISIONS:
            raise pb_utils.TritonModelException(f"{self.name}: precision={precision!r} is not one of {PRECISIONS}")
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]

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

        module = registry.load_model(self.name, version_dir)
        self.module = module.to(self.dtype).to(self.device) if precision != "fp32" else module.to(self.device)
        self.max_batch = int(self.config.get("max_batch_size", 0)) or 1
        self.inputs = [
            (t["name"], pb_utils.triton_string_to_numpy(t["data_type"]), [int(d) for d in t["dims"]])
            for t in self.config["input"]
        ]
        self.outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in self.config["output"]]
        model_spec = spec.MODELS[self.name]
        want_in = [t.name for t in model_spec.inputs]
        self.output_order = [t.name for t in model_spec.outputs]  # the order the module returns them in
        if [n for n, _, _ in self.inputs] != want_in or sorted(n for n, _ in self.outputs) != sorted(self.output_order):
            raise pb_utils.TritonModelException(
                f"{self.name}: config tensors do not match models/spec.py ({want_in} -> {self.output_order})"
            )
        self.ranges = {}
        if self.name == "user_embedding":
            self.ranges["user_id"] = (0, int(self.module.table.shape[0]))

        self.graphs: dict[int, tuple] = {}
        use_graphs = _param(self.config, "cuda_graphs", "true").lower() in ("1", "true", "yes", "on")
        if self.device.type == "cuda" and use_graphs:
            default = ",".join(str(b) for b in self._powers_of_two(self.max_batch))
            sizes = sorted({int(b) for b in _param(self.config, "graph_batch_sizes", default).split(",") if b.strip()})
            if not sizes or sizes[0] < 1 or sizes[-1] > self.max_batch:
                raise pb_utils.TritonModelException(f"{self.name}: graph_batch_sizes {sizes} outside 1..max_batch_size")
            if sizes[-1] < self.max_batch:
                sizes.append(self.max_batch)
            self._capture(sizes)
        log.info(
            "%s: %s on %s, %s, CUDA graphs for batches %s",
            self.name,
            ckpt,
            self.device,
            precision,
            sorted(self.graphs) or "off",
        )

    @staticmethod
    def _powers_of_two(limit: int) -> list[int]:
        out, b = [], 1
        while b < limit:
            out.append(b)
            b *= 2
        return out + [limit]

    # -- execution on torch ---------------------------------------------------------------------
    def _forward(self, xs: list) -> list:
        """Inputs on the device -> outputs on the device, float outputs as float32, in spec order."""
        xs = [x.to(self.dtype) if x.is_floating_point() else x for x in xs]
        out = self.module(*xs)
        out = out if isinstance(out, tuple) else (out,)
        return [o.float() if o.is_floating_point() else o for o in out]

    def _capture(self, sizes: list[int]) -> None:
        pool = torch.cuda.graph_pool_handle()
        with torch.inference_mode():
            for b in sorted(sizes, reverse=True):  # largest first: later captures reuse its pool memory
                static_in = []
                for _name, dtype, dims in self.inputs:
                    torch_dtype = torch.from_numpy(np.empty(0, dtype)).dtype
                    fill = 1 if torch_dtype.is_floating_point else 0  # positive windows; id 0 always exists
                    static_in.append(torch.full((b, *dims), fill, dtype=torch_dtype, device=self.device))
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    for _ in range(3):
                        self._forward(static_in)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    static_out = self._forward(static_in)
                self.graphs[b] = (graph, static_in, static_out)
        torch.cuda.synchronize(self.device)

    def _run(self, arrays: dict) -> list[np.ndarray]:
        n = next(iter(arrays.values())).shape[0]
        with torch.inference_mode():
            bucket = min((b for b in self.graphs if b >= n), default=None)
            if bucket is None:
                xs = [torch.from_numpy(arrays[name]).to(self.device) for name, _, _ in self.inputs]
                out = self._forward(xs)
            else:
                graph, static_in, static_out = self.graphs[bucket]
                for t, (name, _, _) in zip(static_in, self.inputs, strict=True):
                    t[:n].copy_(torch.from_numpy(arrays[name]))
                graph.replay()
                out = [o[:n] for o in static_out]
            return [o.cpu().numpy() for o in out]

    # -- validation ---------------------------------------------------------------------------
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
