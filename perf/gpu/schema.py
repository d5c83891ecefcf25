"""JSON Schemas of the GPU probe and the GPU serving run, and a small validator for them.

The validator covers the JSON Schema keywords used here (type, properties, required,
additionalProperties, items, enum, minimum), so neither the CI machines nor the GPU image need
the `jsonschema` package; tests cross-check with `jsonschema` where it is installed.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1

NUM = {"type": "number"}
NUM_OR_NULL = {"type": ["number", "null"]}
STR_OR_NULL = {"type": ["string", "null"]}
STATUS = {"type": "string", "enum": ["ok", "skipped", "failed"]}


def _obj(properties: dict, required: list[str] | None = None, extra: bool = False) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": extra,
    }


MACHINE = _obj(
    {
        "device": {"type": "string", "enum": ["cpu", "cuda"]},
        "hostname": {"type": "string"},
        "cpu": {"type": "string"},
        "cpu_count": {"type": "integer", "minimum": 1},
        "torch_threads": {"type": "integer", "minimum": 1},
        "gpu": {
            "type": ["object", "null"],
            "properties": {
                "name": {"type": "string"},
                "capability": {"type": "string"},
                "sm_count": {"type": "integer"},
                "memory_gib": NUM,
                "l2_mib": NUM_OR_NULL,
                "driver": STR_OR_NULL,
            },
            "required": ["name", "capability", "sm_count", "memory_gib", "l2_mib", "driver"],
            "additionalProperties": False,
        },
    }
)

VERSIONS = {
    "type": "object",
    "properties": {
        "python": {"type": "string"},
        "torch": {"type": "string"},
        "cuda": STR_OR_NULL,
        "numpy": {"type": "string"},
    },
    "required": ["python", "torch", "cuda", "numpy"],
    "additionalProperties": {"type": ["string", "null"]},
}

LATENCY = {
    "type": ["object", "null"],
    "properties": {"median": NUM, "p95": NUM, "p99": NUM, "mean": NUM, "min": NUM},
    "required": ["median", "p95", "p99", "mean", "min"],
    "additionalProperties": False,
}

FLOOR = {
    "type": ["object", "null"],
    "properties": {
        "bytes": NUM,
        "flops": NUM,
        "bytes_ms": NUM,
        "flops_ms": NUM,
        "floor_ms": NUM,
        "bound": {"type": "string", "enum": ["memory", "compute"]},
        "fraction": NUM_OR_NULL,
    },
    "required": ["bytes", "flops", "bytes_ms", "flops_ms", "floor_ms", "bound", "fraction"],
    "additionalProperties": False,
}

RESULT = _obj(
    {
        "model": {"type": "string"},
        "batch": {"type": "integer", "minimum": 1},
        "variant": {"type": "string"},
        "mode": {"type": "string", "enum": ["eager", "graph", "compile"]},
        "precision": {"type": "string", "enum": ["fp32", "amp_fp16", "amp_bf16", "fp16w", "bf16w"]},
        "status": STATUS,
        "reason": STR_OR_NULL,
        "timer": {"type": "string", "enum": ["cuda_events", "perf_counter"]},
        "iters": {"type": "integer", "minimum": 0},
        "latency_ms": LATENCY,
        "throughput_per_s": NUM_OR_NULL,
        "rel_err": NUM_OR_NULL,
        "topk_agreement": NUM_OR_NULL,
        "floor": FLOOR,
        "compile_s": NUM_OR_NULL,
    }
)

PROBE_SCHEMA: dict[str, Any] = _obj(
    {
        "schema_version": {"type": "integer", "enum": [SCHEMA_VERSION]},
        "kind": {"type": "string", "enum": ["gpu_probe"]},
        "created": {"type": "string"},
        "command": {"type": "string"},
        "mode": {"type": "string", "enum": ["full", "reduced"]},
        "machine": MACHINE,
        "versions": VERSIONS,
        "weights": {"type": "object", "additionalProperties": {"type": "string"}},
        "sizes": {"type": "object", "additionalProperties": {"type": "integer"}},
        "settings": {"type": "object"},
        "ceilings": _obj(
            {
                "copy_gbps": NUM,
                "copy_bytes": {"type": "integer"},
                "matmul_size": {"type": "integer"},
                "matmul_tflops": {
                    "type": "object",
                    "properties": {"fp32": NUM, "fp16": NUM, "bf16": NUM},
                    "required": ["fp32", "fp16", "bf16"],
                    "additionalProperties": False,
                },
            }
        ),
        "kernels_per_call": {"type": "object", "additionalProperties": {"type": ["integer", "null"]}},
        "results": {"type": "array", "items": RESULT},
        "seconds": NUM,
    }
)

SCENARIO = _obj(
    {
        "model": {"type": "string"},
        "protocol": {"type": "string", "enum": ["grpc", "http"]},
        "batch": {"type": "integer", "minimum": 1},
        "concurrency": {"type": "integer", "minimum": 1},
        "status": STATUS,
        "reason": STR_OR_NULL,
        "throughput_per_s": NUM_OR_NULL,
        "latency_us": {
            "type": ["object", "null"],
            "properties": {"avg": NUM, "p50": NUM, "p90": NUM, "p95": NUM, "p99": NUM},
            "required": ["avg", "p50", "p90", "p95", "p99"],
            "additionalProperties": False,
        },
        "server_us": {"type": ["object", "null"], "additionalProperties": NUM},
    }
)

CHECK = _obj(
    {
        "model": {"type": "string"},
        "status": STATUS,
        "reason": STR_OR_NULL,
        "rows": {"type": "integer", "minimum": 0},
        "rel_err": NUM_OR_NULL,
        "topk_agreement": NUM_OR_NULL,
    }
)

SERVING_SCHEMA: dict[str, Any] = _obj(
    {
        "schema_version": {"type": "integer", "enum": [SCHEMA_VERSION]},
        "kind": {"type": "string", "enum": ["gpu_serving"]},
        "created": {"type": "string"},
        "command": {"type": "string"},
        "machine": MACHINE,
        "versions": VERSIONS,
        "config_name": {"type": "string"},
        "instance_kind": {"type": "string", "enum": ["KIND_CPU", "KIND_GPU"]},
        "precision": {"type": "string"},
        "cuda_graphs": {"type": "boolean"},
        "weights": {"type": "object", "additionalProperties": {"type": "string"}},
        "status": STATUS,
        "reason": STR_OR_NULL,
        "checks": {"type": "array", "items": CHECK},
        "scenarios": {"type": "array", "items": SCENARIO},
        "seconds": NUM,
    }
)

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is(value: Any, type_name: str) -> bool:
    if type_name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # NaN is no number
    return isinstance(value, _TYPES[type_name])


def errors(instance: Any, schema: dict, path: str = "$") -> list[str]:
    """Every violation of `schema` by `instance`, as 'path: problem' lines (empty when valid)."""
    out: list[str] = []
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_is(instance, t) for t in names):
            return [f"{path}: {type(instance).__name__} {instance!r:.60} is not of type {'/'.join(names)}"]
    if "enum" in schema and instance not in schema["enum"]:
        out.append(f"{path}: {instance!r} is not one of {schema['enum']}")
    if "minimum" in schema and _is(instance, "number") and instance < schema["minimum"]:
        out.append(f"{path}: {instance} is below the minimum {schema['minimum']}")
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in instance:
                out.append(f"{path}: missing required key {key!r}")
        extra = schema.get("additionalProperties", True)
        for key, value in instance.items():
            if key in props:
                out += errors(value, props[key], f"{path}.{key}")
            elif extra is False:
                out.append(f"{path}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                out += errors(value, extra, f"{path}.{key}")
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            out += errors(item, schema["items"], f"{path}[{i}]")
    return out


def validate(instance: Any, schema: dict) -> None:
    """Raise ValueError naming every violation."""
    problems = errors(instance, schema)
    if problems:
        raise ValueError("JSON does not match its schema:\n  " + "\n  ".join(problems[:20]))
