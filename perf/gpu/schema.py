"""JSON Schemas of the GPU probe and serving output, written in a short notation, and a validator for them.

`expand` turns the notation into JSON Schema: a dict is an object whose keys are all required and whose
other keys are refused (or, under "*", typed; `"?": True` allows null); a one-item list is an array; a
tuple an enum; a string a type ("str", "int", "num", "bool", "obj"), with "?" allowing null and ">=N" a
minimum. The writers start their rows from the same dicts (`dict.fromkeys(RESULT)`). The validator covers
what expansion produces, so neither CI nor the GPU image needs `jsonschema` (tests cross-check with it).
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1
NAMES = {"str": "string", "int": "integer", "num": "number", "bool": "boolean", "obj": "object"}
STATUS = ("ok", "skipped", "failed")


def expand(spec: Any) -> dict:
    if isinstance(spec, dict):
        props = {k: expand(v) for k, v in spec.items() if k not in ("*", "?")}
        extra = expand(spec["*"]) if "*" in spec else False
        kind = ["object", "null"] if spec.get("?") else "object"
        return {"type": kind, "properties": props, "required": list(props), "additionalProperties": extra}
    if isinstance(spec, list):
        return {"type": "array", "items": expand(spec[0])}
    if isinstance(spec, tuple):
        return {"type": "integer" if isinstance(spec[0], int) else "string", "enum": list(spec)}
    name, _, minimum = spec.rstrip("?").partition(">=")
    out: dict = {"type": [NAMES[name], "null"] if spec.endswith("?") else NAMES[name]}
    return out | ({"minimum": int(minimum)} if minimum else {})


def nums(keys: str, nullable: bool = True) -> dict:
    return {"?": nullable, **dict.fromkeys(keys.split(), "num")}


GPU = {"name": "str", "capability": "str", "sm_count": "int", "memory_gib": "num", "l2_mib": "num?", "driver": "str?"}
MACHINE = {
    "device": ("cpu", "cuda"),
    "hostname": "str",
    "cpu": "str",
    "cpu_count": "int>=1",
    "torch_threads": "int>=1",
    "gpu": {**GPU, "?": True},
}
VERSIONS = {"python": "str", "torch": "str", "cuda": "str?", "numpy": "str", "*": "str?"}
HEAD = {
    "schema_version": (SCHEMA_VERSION,),
    "created": "str",
    "command": "str",
    "machine": MACHINE,
    "versions": VERSIONS,
    "weights": {"*": "str"},
}
RESULT = {
    "model": "str",
    "batch": "int>=1",
    "variant": "str",
    "mode": ("eager", "graph", "compile"),
    "precision": ("fp32", "amp_fp16", "amp_bf16", "fp16w", "bf16w"),
    "status": STATUS,
    "reason": "str?",
    "timer": ("cuda_events", "perf_counter"),
    "iters": "int>=0",
    "latency_ms": nums("median p95 p99 mean min"),
    "throughput_per_s": "num?",
    "rel_err": "num?",
    "topk_agreement": "num?",
    "floor": nums("bytes flops bytes_ms flops_ms floor_ms") | {"bound": ("memory", "compute"), "fraction": "num?"},
    "compile_s": "num?",
}
PROBE = {
    **HEAD,
    "kind": ("gpu_probe",),
    "mode": ("full", "reduced"),
    "sizes": {"*": "int"},
    "settings": "obj",
    "ceilings": {
        "copy_gbps": "num",
        "copy_bytes": "int",
        "matmul_size": "int",
        "matmul_tflops": nums("fp32 fp16 bf16", False),
    },
    "kernels_per_call": {"*": "int?"},
    "results": [RESULT],
    "seconds": "num",
}
SCENARIO = {
    "model": "str",
    "protocol": ("grpc", "http"),
    "batch": "int>=1",
    "concurrency": "int>=1",
    "status": STATUS,
    "reason": "str?",
    "throughput_per_s": "num?",
    "latency_us": nums("avg p50 p90 p95 p99"),
    "server_us": {"?": True, "*": "num"},
}
CHECK = {
    "model": "str",
    "status": STATUS,
    "reason": "str?",
    "rows": "int>=0",
    "rel_err": "num?",
    "topk_agreement": "num?",
}
SERVING = {
    **HEAD,
    "kind": ("gpu_serving",),
    "config_name": "str",
    "instance_kind": ("KIND_CPU", "KIND_GPU"),
    "precision": "str",
    "cuda_graphs": "bool",
    "status": STATUS,
    "reason": "str?",
    "checks": [CHECK],
    "scenarios": [SCENARIO],
    "seconds": "num",
}
PROBE_SCHEMA, SERVING_SCHEMA = expand(PROBE), expand(SERVING)


def _is(value: Any, type_name: str) -> bool:
    if type_name in ("integer", "number") and isinstance(value, bool):
        return False
    if type_name == "number":
        return isinstance(value, int | float) and value == value  # NaN is no number
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None), "integer": int}
    return isinstance(value, types[type_name])


def errors(instance: Any, schema: dict, path: str = "$") -> list[str]:
    """Every violation of `schema` by `instance`, as 'path: problem' lines (empty when valid)."""
    names = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
    if not any(_is(instance, t) for t in names):
        return [f"{path}: {type(instance).__name__} {instance!r:.60} is not of type {'/'.join(names)}"]
    out: list[str] = []
    if "enum" in schema and instance not in schema["enum"]:
        out.append(f"{path}: {instance!r} is not one of {schema['enum']}")
    if "minimum" in schema and _is(instance, "number") and instance < schema["minimum"]:
        out.append(f"{path}: {instance} is below the minimum {schema['minimum']}")
    if isinstance(instance, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
        out += [f"{path}: missing required key {key!r}" for key in schema.get("required", []) if key not in instance]
        for key, value in instance.items():
            if key in props or isinstance(extra, dict):
                out += errors(value, props.get(key, extra), f"{path}.{key}")
            elif extra is False:
                out.append(f"{path}: unexpected key {key!r}")
    for i, item in enumerate(instance if isinstance(instance, list) and "items" in schema else []):
        out += errors(item, schema["items"], f"{path}[{i}]")
    return out


def validate(instance: Any, schema: dict) -> None:
    """Raise ValueError naming every violation."""
    if problems := errors(instance, schema):
        raise ValueError("JSON does not match its schema:\n  " + "\n  ".join(problems[:20]))
