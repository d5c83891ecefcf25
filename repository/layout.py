"""The model repository: layout checks, copying configs for a second repository, and the
agreement between each config, its ONNX file and the ensemble steps.

    python -m repository.layout --repo model_repository --check-layout
    python -m repository.layout --repo model_repository --copy-configs-to build/test/model_repository
    python -m repository.layout --repo model_repository --check-onnx
    python -m repository.layout --repo model_repository --write-variants

Precision variants. `tritonserver --model-config-name=<variant>` serves `configs/<variant>.pbtxt` of each
model that has one, and `config.pbtxt` (the gpu target) of each that has none; so every ONNX model carries
every variant, written from its base config by `--write-variants` (never edited by hand; a test checks):

    cpu       configs/cpu.pbtxt        the precision chosen by measurement (its comment says why)
    cpu_fp32  configs/cpu_fp32.pbtxt   cpu.pbtxt serving model.onnx
    cpu_int8  configs/cpu_int8.pbtxt   cpu.pbtxt serving model.int8.onnx
    cpu_lanes configs/cpu_lanes.pbtxt  cpu.pbtxt with priority lanes on nhits, reservoir, forecast_blend
    gpu       config.pbtxt             TensorRT FP16 model.plan
    gpu_int8  configs/gpu_int8.pbtxt   config.pbtxt serving model.int8.plan
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

from common.triton import DTYPES, load_config
from models import spec

# variant name -> (the config it is written from, the model file it serves)
VARIANTS = {
    "cpu_fp32": ("configs/cpu.pbtxt", spec.ONNX_FP32),
    "cpu_int8": ("configs/cpu.pbtxt", spec.ONNX_INT8),
    "cpu_lanes": ("configs/cpu.pbtxt", None),  # None: the file its base serves
    "gpu_int8": ("config.pbtxt", spec.PLAN_INT8),
}
BASE_FILES = ("config.pbtxt", "configs/cpu.pbtxt")
CONFIG_FILES = (*BASE_FILES, *(f"configs/{v}.pbtxt" for v in VARIANTS))
_FILENAME_LINE = re.compile(r'^default_model_filename: ".*"$', re.M)
# Priority lanes, the cpu_lanes variant of the models a trading request passes (the forecast ensemble passes a
# request's priority and timeout to each step). Not in cpu.pbtxt: on Triton 2.51 (the wheel) a model with
# `priority_levels` now and then leaves a request in its queue until the batcher's 500 ms idle wait ends
# (serving/README.md, "Priority lanes"), which costs more than the lanes save on two cores.
LANES_MODELS = ("nhits", "reservoir", "forecast_blend")
LANES = """\
  # Priority lanes (clients.Priority): 1 critical, 2 normal (a request without a priority), 3 background.
  # Triton batches the lowest level first. A request still queued past its timeout is refused unanswered
  # ("Request timeout expired"): the lane's default, or less when the request asks (clients send what is left
  # of their deadline; Triton lets a request shorten its lane's timeout, never lengthen it). Critical: 10 ms,
  # the p99 budget. Background: at most 32 queued requests, more are refused ("Exceeds maximum queue size").
  priority_levels: 3
  default_priority_level: 2
  priority_queue_policy { key: 1 value { timeout_action: REJECT default_timeout_microseconds: 10000 allow_timeout_override: true } }
  priority_queue_policy { key: 2 value { timeout_action: REJECT default_timeout_microseconds: 10000000 allow_timeout_override: true } }
  priority_queue_policy { key: 3 value { timeout_action: REJECT default_timeout_microseconds: 60000000 allow_timeout_override: true max_queue_size: 32 } }
"""


def config_files(model: str) -> tuple[str, ...]:
    """The config files a model folder holds: ensembles and python models have one for both targets."""
    m = spec.MODELS[model]
    return ("config.pbtxt",) if m.ensemble or m.python else CONFIG_FILES


def config_paths(repo: Path) -> list[Path]:
    return sorted(p for p in repo.rglob("*.pbtxt") if "1" not in p.relative_to(repo).parts)


def tensors(config_tensors) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {t.name: (DTYPES.get(t.data_type, str(t.data_type)), tuple(t.dims)) for t in config_tensors}


def served_file(repo: Path, model: str, config: str = "cpu") -> Path:
    """The model file that `--model-config-name=<config>` serves: its config's default_model_filename, in the
    version Triton serves (the highest: serving.rollout adds versions)."""
    path = repo / model / "configs" / f"{config}.pbtxt"
    cfg = load_config(path if path.is_file() else repo / model / "config.pbtxt")
    return spec.served_version_dir(model, repo) / (cfg.default_model_filename or spec.ONNX_FP32)


def check_layout(repo: Path, dims: bool = True) -> list[str]:
    """Every model of the spec has its configs, names match folders, tensors match the spec (their dims too
    unless `dims` is False: the configs of a repository made for other dims, see set_dims)."""
    problems = []
    for name, model in spec.MODELS.items():
        files = config_files(name)
        for rel in files:
            path = repo / name / rel
            if not path.is_file():
                problems.append(f"{path} is missing")
                continue
            try:
                cfg = load_config(path)
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if cfg.name != name:
                problems.append(f"{path}: name {cfg.name!r} does not match its folder {name!r}")
            if cfg.max_batch_size != model.max_batch_size:
                problems.append(f"{path}: max_batch_size {cfg.max_batch_size} != spec {model.max_batch_size}")
            want_in = {t.name: (t.dtype, t.dims) for t in model.inputs}
            want_out = {t.name: (t.dtype, t.dims) for t in model.outputs}
            got_in, got_out = tensors(cfg.input), tensors(cfg.output)
            if not dims:
                want_in, want_out = _dtypes(want_in), _dtypes(want_out)
                got_in, got_out = _dtypes(got_in), _dtypes(got_out)
            if got_in != want_in:
                problems.append(f"{path}: inputs {got_in} != spec {want_in}")
            if got_out != want_out:
                problems.append(f"{path}: outputs {got_out} != spec {want_out}")
    return problems


def _dtypes(named: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, str]:
    return {name: dtype for name, (dtype, _) in named.items()}


_TENSOR_DIMS = re.compile(r'((?:name|key): "(?P<tensor>\w+)"[^\n]*?dims: \[ )[0-9, ]+( \])')


def _with_dims(m: re.Match, dims: dict[str, tuple[int, ...]]) -> str:
    want = dims.get(m.group("tensor"))
    return m.group(0) if want is None else f"{m.group(1)}{', '.join(map(str, want))}{m.group(3)}"


def set_dims(repo: Path) -> list[Path]:
    """Rewrite the tensor dims of every config of `repo` (and its warm-up inputs) to models.spec's current
    dims (spec.use_dims), then the precision variants from their bases; the text, comments and all, stays
    otherwise as it was. Returns the files changed."""
    changed = []
    for name, model in spec.MODELS.items():
        # a dynamic (spec.SEQUENCE) dim is [-1] in the tensor and concrete in a warm-up input: left as written
        dims = {t.name: t.dims for t in (*model.inputs, *model.outputs) if spec.SEQUENCE not in t.dims}
        for rel in ("config.pbtxt",) if model.ensemble else BASE_FILES:
            path = repo / name / rel
            if not path.is_file():
                continue
            text = path.read_text()

            new = _TENSOR_DIMS.sub(lambda m, dims=dims: _with_dims(m, dims), text)
            if new != text:
                path.write_text(new)
                changed.append(path)
    return changed + write_variants(repo)


def check_ensembles(repo: Path) -> list[str]:
    """Each ensemble step maps existing tensors of its model with matching dtype and dims."""
    problems = []
    for name, model in spec.MODELS.items():
        if not model.ensemble:
            continue
        cfg = load_config(repo / name / "config.pbtxt")
        available = tensors(cfg.input)
        produced: dict[str, tuple[str, tuple[int, ...]]] = {}
        for step in cfg.ensemble_scheduling.step:
            for rel in config_files(step.model_name):
                sub = load_config(repo / step.model_name / rel)
                sub_in, sub_out = tensors(sub.input), tensors(sub.output)
                for key, value in step.input_map.items():
                    source = {**available, **produced}.get(value)
                    if key not in sub_in:
                        problems.append(f"{name}: step {step.model_name} has no input {key!r} ({rel})")
                    elif source is None:
                        problems.append(f"{name}: step {step.model_name} reads {value!r}, which nothing produces")
                    elif source != sub_in[key]:
                        problems.append(
                            f"{name}: {value!r} is {source} but {step.model_name}.{key} wants {sub_in[key]}"
                        )
                for key, value in step.output_map.items():
                    if key not in sub_out:
                        problems.append(f"{name}: step {step.model_name} has no output {key!r} ({rel})")
                    else:
                        produced[value] = sub_out[key]
        for out_name, out in tensors(cfg.output).items():
            if produced.get(out_name) != out:
                problems.append(f"{name}: output {out_name!r} {out} is produced as {produced.get(out_name)}")
    return problems


def check_onnx(repo: Path, filename: str = spec.ONNX_FP32) -> list[str]:
    """Config tensors agree with the exported ONNX file: names, dtypes, dims after the batch axis."""
    import onnx

    problems = []
    elem = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64"}
    for name in (*spec.EXPORTED, spec.STREAM.name):
        path = spec.version_dir(name, repo) / filename
        if not path.is_file():
            problems.append(f"{path} is missing: run `make export`")
            continue
        graph = onnx.load(str(path), load_external_data=False).graph
        cfg = load_config(repo / name / "configs/cpu.pbtxt")

        def shape(vi):
            dims = vi.type.tensor_type.shape.dim
            per_sample = tuple(spec.SEQUENCE if d.dim_param else d.dim_value for d in dims[1:])
            return elem.get(vi.type.tensor_type.elem_type, "?"), per_sample, dims[0]

        onnx_in = {vi.name: shape(vi) for vi in graph.input}
        onnx_out = {vi.name: shape(vi) for vi in graph.output}
        for kind, cfg_t, onnx_t in (("input", cfg.input, onnx_in), ("output", cfg.output, onnx_out)):
            for t_name, (dtype, dims) in tensors(cfg_t).items():
                if t_name in ("START", "END", "CORRID"):
                    continue
                if t_name not in onnx_t:
                    problems.append(f"{path}: no {kind} {t_name!r} (has {sorted(onnx_t)})")
                    continue
                o_dtype, o_dims, batch = onnx_t[t_name]
                if (o_dtype, o_dims) != (dtype, dims):
                    problems.append(f"{path}: {kind} {t_name!r} is {o_dtype}{list(o_dims)}, config {dtype}{list(dims)}")
                if batch.dim_value not in (0,) and not batch.dim_param:
                    problems.append(f"{path}: {kind} {t_name!r} has a fixed batch axis {batch.dim_value}")
    return problems


def variant_text(base: str, base_rel: str, filename: str | None, lanes: bool = False) -> str:
    """A variant config: the base config's text serving `filename` (the line's reason comment dropped), or
    its own file (None); `lanes` adds LANES at the end of its dynamic_batching block."""
    lines = base.splitlines()
    if filename is not None:
        lines = [line.split("  #")[0] if line.startswith("default_model_filename:") else line for line in lines]
    if lanes:
        lines = [line for line in lines if not line.startswith("  # No priority lanes")]
        start = lines.index("dynamic_batching {")
        end = lines.index("}", start)
        lines[end:end] = LANES.rstrip("\n").split("\n")
    body = "\n".join(lines) + "\n"
    if filename is not None:
        if not _FILENAME_LINE.search(body):
            raise ValueError(f"{base_rel} has no default_model_filename line to vary")
        body = _FILENAME_LINE.sub(f'default_model_filename: "{filename}"', body, count=1)
    what = "with priority lanes" if lanes else f"serving {filename}" if filename else "as it is"
    header = (
        f"# Written from {os.path.relpath(base_rel, 'configs')} by `python -m repository.layout --write-variants`: "
        f"the same config {what}.\n# Do not edit: edit the base config and write the variants again.\n"
    )
    return header + body


def variants(repo: Path, models: list[str] | None = None) -> dict[Path, str]:
    """Every variant file of every ONNX model of `repo` (or of `models`) -> its text as written from its base."""
    out = {}
    for name in models if models is not None else [*spec.EXPORTED, spec.STREAM.name]:
        for variant, (base_rel, filename) in VARIANTS.items():
            base = repo / name / base_rel
            if base.is_file():
                lanes = variant == "cpu_lanes" and name in LANES_MODELS
                text = variant_text(base.read_text(), base_rel, filename, lanes)
                out[repo / name / "configs" / f"{variant}.pbtxt"] = text
    return out


def write_variants(repo: Path, models: list[str] | None = None) -> list[Path]:
    written = []
    for path, text in variants(repo, models).items():
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    return written


def check_variants(repo: Path) -> list[str]:
    return [
        f"{path} differs from what its base config gives: run `python -m repository.layout --write-variants`"
        for path, text in variants(repo).items()
        if not path.is_file() or path.read_text() != text
    ]


def copy_configs(repo: Path, dest: Path) -> None:
    """Copy configs (not artifacts) so a second repository (tests, small sizes) shares them."""
    for name in spec.MODELS:
        for rel in CONFIG_FILES:
            src = repo / name / rel
            if src.is_file():
                target = dest / name / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists() or target.read_bytes() != src.read_bytes():
                    shutil.copy2(src, target)
        (dest / name / "1").mkdir(parents=True, exist_ok=True)
        code = repo / name / "1" / "model.py"  # a python model's code is part of its config
        if code.is_file() and (
            not (dest / name / "1" / "model.py").is_file()
            or (dest / name / "1" / "model.py").read_bytes() != code.read_bytes()
        ):
            shutil.copy2(code, dest / name / "1" / "model.py")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="check or copy the Triton model repository")
    p.add_argument("--repo", type=Path, default=spec.MODEL_REPOSITORY)
    p.add_argument("--check-layout", action="store_true", help="configs parse and match models/spec.py")
    p.add_argument("--check-onnx", action="store_true", help="configs match the exported ONNX files")
    p.add_argument("--copy-configs-to", type=Path, metavar="DIR", help="copy every config into DIR")
    p.add_argument("--write-variants", action="store_true", help="write the precision variants from the base configs")
    p.add_argument("--any-dims", action="store_true", help="--check-layout: names and dtypes only, not dims")
    args = p.parse_args(argv)
    if not args.repo.is_dir():
        p.error(f"model repository {args.repo} does not exist")
    if not (args.check_layout or args.check_onnx or args.copy_configs_to or args.write_variants):
        p.error("nothing to do: give --check-layout, --check-onnx, --copy-configs-to or --write-variants")
    if args.write_variants:
        for path in write_variants(args.repo):
            print(f"wrote {path}")
    problems = []
    if args.check_layout:
        problems += check_layout(args.repo, not args.any_dims) + check_ensembles(args.repo) + check_variants(args.repo)
    if args.check_onnx:
        problems += check_onnx(args.repo)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        return 1
    if args.copy_configs_to:
        copy_configs(args.repo, args.copy_configs_to)
    return 0


if __name__ == "__main__":
    sys.exit(main())
