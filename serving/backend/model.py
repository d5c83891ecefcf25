"""onnxruntime_py: a Python-based Triton backend that runs exported ONNX with ONNX Runtime.

Installed by `serving.server` as `<backend-directory>/onnxruntime_py/model.py` and selected by
`backend: "onnxruntime_py"` in a model's `configs/cpu.pbtxt`. It needs only numpy and
onnxruntime, so it also runs inside the NGC tritonserver image (docker/Dockerfile).

What it does per execution:
- reads input/output names and dtypes from the model config, never from the ONNX file;
- validates every request on its own (NaN/Inf in float inputs, ids outside the table) and
  answers a bad request with a TritonError naming the problem, while its batch-mates run;
- concatenates the good requests of a dynamic batch, runs ONNX Runtime once, splits the
  outputs back per request;
- for a model with `sequence_batching` (reservoir_stream), keeps one state vector per
  correlation id: START resets it, END releases it, idle sequences are evicted after the
  config's `max_sequence_idle_microseconds` (the python backend of Triton 2.51 accepts a
  `state` section but never carries the state: state_in always holds the initial state).

Parameters (config `parameters`): `precision` = fp32 | int8 (model.onnx or model.int8.onnx),
`intra_op_threads` (ONNX Runtime threads per instance, 0 = ONNX Runtime's default).
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

ONNX_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
CONTROL_NAMES = ("START", "END", "CORRID")
STATE_IN, STATE_OUT = "state_in", "state_out"

log = logging.getLogger("onnxruntime_py")


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
        precision = _param(self.config, "precision", "fp32").lower()
        if precision not in ONNX_FILES:
            raise pb_utils.TritonModelException(
                f"{self.name}: parameter precision={precision!r} is not one of {sorted(ONNX_FILES)}"
            )
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(version_dir, ONNX_FILES[precision])
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"{self.name}: {path} does not exist; run `make export` to create it")

        options = ort.SessionOptions()
        threads = int(_param(self.config, "intra_op_threads", "0"))
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # a corrupt or truncated file: name it, fail this model only
            raise pb_utils.TritonModelException(f"{self.name}: cannot load {path}: {exc}") from exc

        self.max_batch = int(self.config.get("max_batch_size", 0))
        self.inputs = [
            (t["name"], pb_utils.triton_string_to_numpy(t["data_type"]), [int(d) for d in t["dims"]])
            for t in self.config["input"]
            if t["name"] not in CONTROL_NAMES
        ]
        self.outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in self.config["output"]]
        onnx_inputs = {i.name for i in self.session.get_inputs()}
        onnx_outputs = {o.name for o in self.session.get_outputs()}
        self.stateful = "sequence_batching" in self.config
        expected_in = {n for n, _, _ in self.inputs} | ({STATE_IN} if self.stateful else set())
        expected_out = {n for n, _ in self.outputs} | ({STATE_OUT} if self.stateful else set())
        if expected_in != onnx_inputs or not expected_out <= onnx_outputs:
            raise pb_utils.TritonModelException(
                f"{self.name}: config tensors {sorted(expected_in)} -> {sorted(expected_out)} do not match "
                f"{path}: {sorted(onnx_inputs)} -> {sorted(onnx_outputs)}"
            )
        self.fetch = [n for n, _ in self.outputs] + ([STATE_OUT] if self.stateful else [])

        # Valid id ranges written by the exporter into the ONNX metadata: "valid_range.<input>" = "lo,hi".
        meta = self.session.get_modelmeta().custom_metadata_map
        self.ranges = {}
        for key, value in meta.items():
            if key.startswith("valid_range."):
                lo, hi = (int(v) for v in value.split(","))
                self.ranges[key.removeprefix("valid_range.")] = (lo, hi)

        if self.stateful:
            seq = self.config["sequence_batching"]
            state_input = next(i for i in self.session.get_inputs() if i.name == STATE_IN)
            self.state_dim = int(state_input.shape[-1])
            self.idle_s = int(seq.get("max_sequence_idle_microseconds", 60_000_000)) / 1e6
            self.states: dict[int, np.ndarray] = {}
            self.last_seen: dict[int, float] = {}
            self.live_family = self.live_gauge = None  # sequences holding a state: an eviction probe
            if hasattr(pb_utils, "MetricFamily"):
                self.live_family = pb_utils.MetricFamily(
                    name="onnxruntime_py_sequence_states",
                    description="Sequences whose state the onnxruntime_py backend holds",
                    kind=pb_utils.MetricFamily.GAUGE,
                )
                self.live_gauge = self.live_family.Metric(
                    labels={
                        "model": self.name,
                        "version": str(args["model_version"]),
                        "instance": args["model_instance_name"],
                    }
                )
        log.info("%s: loaded %s (%s, %d intra-op threads)", self.name, path, precision, threads)

    # -- validation ---------------------------------------------------------------------------
    def _check(self, arrays: dict[str, np.ndarray]) -> str | None:
        """Return a message naming the problem with one request, or None when it is good."""
        for name, dtype, dims in self.inputs:
            a = arrays[name]
            if a.dtype != dtype:
                return f"input '{name}' has dtype {a.dtype}, expected {np.dtype(dtype).name}"
            if list(a.shape[1:]) != dims:
                return f"input '{name}' has shape {list(a.shape)}, expected [batch, {', '.join(map(str, dims))}]"
            if a.shape[0] == 0:
                return f"input '{name}' has an empty batch"
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                bad = int(np.argwhere(~np.isfinite(a))[0][0])
                return f"input '{name}' contains NaN or Inf (batch row {bad})"
            if name in self.ranges:
                lo, hi = self.ranges[name]
                out = (a < lo) | (a >= hi)
                if out.any():
                    value = int(a[out][0])
                    return f"input '{name}' value {value} is out of range [{lo}, {hi})"
        return None

    # -- execution ----------------------------------------------------------------------------
    def execute(self, requests):
        responses: list = [None] * len(requests)
        good: list[int] = []
        arrays: list[dict[str, np.ndarray]] = []
        for i, request in enumerate(requests):
            feed = {}
            for name, _, _ in self.inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is None:
                    break
                feed[name] = tensor.as_numpy()
            if len(feed) != len(self.inputs):
                missing = [n for n, _, _ in self.inputs if n not in feed]
                responses[i] = _error(f"missing input tensor(s) {missing}")
                continue
            problem = self._check(feed)
            if problem is not None:
                responses[i] = _error(f"{self.name}: {problem}")
                if self.stateful and (self._control(request, "START") or self._control(request, "END")):
                    # Triton started or ended the sequence anyway: an old state must not live on.
                    self._forget(self._control(request, "CORRID"))
                continue
            good.append(i)
            arrays.append(feed)

        if good:
            if self.stateful:
                self._execute_stateful(requests, good, arrays, responses)
            else:
                self._execute_batch(good, arrays, responses)
        if self.stateful and self.live_gauge is not None:
            self.live_gauge.set(len(self.states))
        return responses

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.fetch, feed)

    def _execute_batch(self, good, arrays, responses) -> None:
        sizes = [arrays[j][self.inputs[0][0]].shape[0] for j in range(len(good))]
        if len(good) == 1:
            feed = arrays[0]
        else:
            feed = {name: np.concatenate([a[name] for a in arrays]) for name, _, _ in self.inputs}
        try:
            results = self._run(feed)
        except Exception as exc:  # one failed execution fails its requests, not the server
            for i in good:
                responses[i] = _error(f"{self.name}: ONNX Runtime failed: {exc}")
            return
        offsets = np.cumsum([0, *sizes])
        for k, i in enumerate(good):
            lo, hi = offsets[k], offsets[k + 1]
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(r[lo:hi]).astype(dtype, copy=False))
                for (name, dtype), r in zip(self.outputs, results, strict=False)
            ]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)

    def _control(self, request, name: str) -> int:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return int(tensor.as_numpy().reshape(-1)[0]) if tensor is not None else 0

    def _forget(self, corrid: int) -> None:
        self.states.pop(corrid, None)
        self.last_seen.pop(corrid, None)

    def _execute_stateful(self, requests, good, arrays, responses) -> None:
        now = time.monotonic()
        corrids = [self._control(requests[i], "CORRID") for i in good]
        # Free sequences that went quiet: Triton's sequence batcher has already released them. One
        # with a tick in this batch is live, however long that tick waited in Triton's queue.
        in_batch = set(corrids)
        for corrid in [c for c, t in self.last_seen.items() if now - t > self.idle_s and c not in in_batch]:
            self._forget(corrid)

        batch_ids, rows, ends = [], [], []
        for k, i in enumerate(good):
            request = requests[i]
            corrid = corrids[k]
            start, end = self._control(request, "START"), self._control(request, "END")
            if arrays[k][self.inputs[0][0]].shape[0] != 1:
                responses[i] = _error(f"{self.name}: a sequence request carries exactly one tick (batch 1)")
                if start or end:  # Triton started or ended the sequence anyway
                    self._forget(corrid)
                continue
            if start:
                self.states[corrid] = np.zeros((1, self.state_dim), np.float32)
            elif corrid not in self.states:
                responses[i] = _error(
                    f"{self.name}: sequence {corrid} has no state (never started, ended or idle for "
                    f"more than {self.idle_s:g} s): send START first"
                )
                continue
            batch_ids.append((i, corrid))
            rows.append(k)
            ends.append(end)
        if not batch_ids:
            return
        feed = {name: np.concatenate([arrays[k][name] for k in rows]) for name, _, _ in self.inputs}
        feed[STATE_IN] = np.concatenate([self.states[c] for _, c in batch_ids])
        try:
            *results, new_state = self._run(feed)
        except Exception as exc:
            for i, _ in batch_ids:
                responses[i] = _error(f"{self.name}: ONNX Runtime failed: {exc}")
            return
        for k, ((i, corrid), end) in enumerate(zip(batch_ids, ends, strict=True)):
            if end:
                self._forget(corrid)
            else:
                self.states[corrid] = new_state[k : k + 1].copy()
                self.last_seen[corrid] = now
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(r[k : k + 1]).astype(dtype, copy=False))
                for (name, dtype), r in zip(self.outputs, results, strict=False)
            ]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        if self.stateful:
            self.states.clear()
            self.live_gauge = self.live_family = None  # the Metric goes before its MetricFamily
