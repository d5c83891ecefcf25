"""Assemble a Triton model repository that serves the project's models with the torch_py backend.

    python -m perf.gpu.repository --out build/gpu/model_repository --artifacts artifacts
    python -m perf.gpu.repository --out build/gpu/model_repository --synthesize        # no checkpoints at hand

Per exported model: configs/torch_gpu.pbtxt (the overlay's, with `project_root` and the chosen precision),
configs/torch_cpu.pbtxt (the same on KIND_CPU without CUDA graphs) and 1/checkpoints/<model>.pt (a link to
`<artifacts>/checkpoints/<model>.pt` or, with --synthesize, a same-shape stand-in from perf.gpu.weights).
The ensembles come from model_repository/ without their response cache (perf inputs repeat).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
from pathlib import Path

from models import registry, spec

OVERLAY = Path(__file__).resolve().parent / "model_repository_overlay"
CONFIG_GPU, CONFIG_CPU = "torch_gpu", "torch_cpu"
BASE = ("nhits", "reservoir", "forecast_blend", "similarity", "user_embedding")
ENSEMBLES = {"forecast": ("nhits", "reservoir", "forecast_blend"), "recommend": ("user_embedding", "similarity")}
PRECISIONS = ("fp32", "fp16", "bf16")


def _set_param(text: str, key: str, value: str) -> str:
    line = f'parameters {{ key: "{key}", value: {{ string_value: "{value}" }} }}'
    pattern = re.compile(rf'^parameters \{{ key: "{re.escape(key)}".*$', re.MULTILINE)
    if pattern.search(text):
        return pattern.sub(line, text, count=1)
    return text.rstrip("\n") + "\n" + line + "\n"


def gpu_config(model: str, precision: str, cuda_graphs: bool, project_root: Path) -> str:
    text = (OVERLAY / model / "configs" / f"{CONFIG_GPU}.pbtxt").read_text()
    text = _set_param(text, "precision", precision)
    text = _set_param(text, "cuda_graphs", "true" if cuda_graphs else "false")
    return _set_param(text, "project_root", str(project_root))


def cpu_config(gpu_text: str, threads: int) -> str:
    text = gpu_text.replace("kind: KIND_GPU", "kind: KIND_CPU")
    text = _set_param(text, "cuda_graphs", "false")
    text = _set_param(text, "precision", "fp32")  # half-precision matmuls have no fast path on these CPUs
    return _set_param(text, "num_threads", str(threads))


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    try:
        os.symlink(src.resolve(), dest)
    except OSError:
        shutil.copy2(src, dest)


def assemble(
    out: Path,
    artifacts: Path | None,
    models: tuple[str, ...] = (*BASE, *ENSEMBLES),
    precision: str = "fp32",
    cuda_graphs: bool = True,
    synthesize: bool = False,
    threads: int = 1,
    n_items: int = spec.N_ITEMS,
    n_users: int = spec.N_USERS,
    source_repo: Path = spec.ROOT / "model_repository",
) -> dict[str, str]:
    """Write the repository; returns where each model's weights came from."""
    from perf.gpu import weights  # imports torch; keep `--help` fast

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if unknown := [m for m in models if m not in BASE and m not in ENSEMBLES]:
        raise ValueError(f"unknown model(s) {unknown}: expected some of {', '.join((*BASE, *ENSEMBLES))}")
    for ens in models:
        if missing := [m for m in ENSEMBLES.get(ens, ()) if m not in models]:
            raise ValueError(f"ensemble {ens} needs {missing} in the repository too")
    out.mkdir(parents=True, exist_ok=True)
    sources: dict[str, str] = {}
    for model in (m for m in models if m in BASE):
        configs = out / model / "configs"
        configs.mkdir(parents=True, exist_ok=True)
        text = gpu_config(model, precision, cuda_graphs, spec.ROOT)
        (configs / f"{CONFIG_GPU}.pbtxt").write_text(text)
        (configs / f"{CONFIG_CPU}.pbtxt").write_text(cpu_config(text, threads))
        version = out / model / "1"
        ckpt = registry.checkpoint_path(artifacts, model) if artifacts is not None else None
        if ckpt is not None and ckpt.is_file():
            _link(ckpt, registry.checkpoint_path(version, model))
            sources[model] = f"checkpoint {ckpt}"
        elif synthesize:
            if (target := registry.checkpoint_path(version, model)).is_symlink():
                target.unlink()
            sources[model] = weights.synthesize_checkpoint(version, model, n_items, n_users)
        else:
            raise FileNotFoundError(
                f"no checkpoint for {model} in {artifacts}/checkpoints: run `make export` (or models.train), "
                "or pass --synthesize for same-shape stand-ins"
            )
    for ens in (m for m in models if m in ENSEMBLES):
        text = (source_repo / ens / "config.pbtxt").read_text()
        text = re.sub(r"^response_cache \{[^}]*\}\n?", "", text, flags=re.MULTILINE)
        (out / ens / "1").mkdir(parents=True, exist_ok=True)
        (out / ens / "config.pbtxt").write_text(
            "# Copied by perf.gpu.repository without its response cache (perf inputs repeat).\n" + text
        )
    return sources


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The repository's options, shared with perf.gpu.serve."""
    p.add_argument("--artifacts", type=Path, help="directory holding checkpoints/<model>.pt")
    p.add_argument("--synthesize", action="store_true", help="same-shape stand-ins for missing checkpoints")
    p.add_argument("--models", default=",".join((*BASE, *ENSEMBLES)), help="comma list of models and ensembles")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="GPU configs only; CPU stays fp32")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false")
    p.add_argument("--threads", type=int, default=1, help="torch threads per CPU instance (torch_cpu)")
    p.add_argument("--n-items", type=int, default=spec.N_ITEMS, help="--synthesize: catalog rows")
    p.add_argument("--n-users", type=int, default=spec.N_USERS, help="--synthesize: user table rows")


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace, need_weights: bool = True) -> None:
    args.models = tuple(m for m in args.models.split(",") if m)
    if bad := [m for m in args.models if m not in BASE and m not in ENSEMBLES]:
        p.error(f"unknown model(s) {bad}: expected some of {', '.join((*BASE, *ENSEMBLES))}")
    if need_weights and args.artifacts is None and not args.synthesize:
        p.error("give --artifacts DIR (checkpoints) or --synthesize")
    if args.artifacts is not None and not args.artifacts.is_dir():
        p.error(f"artifacts directory {args.artifacts} does not exist")


def assemble_from(args: argparse.Namespace, out: Path) -> dict[str, str]:
    keys = ("artifacts", "models", "precision", "cuda_graphs", "synthesize", "threads", "n_items", "n_users")
    return assemble(out, **{k: getattr(args, k) for k in keys})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("build/gpu/model_repository"))
    add_arguments(p)
    args = p.parse_args(argv)
    check_args(p, args)
    try:
        sources = assemble_from(args, args.out)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for model, source in sources.items():
        print(f"{model}: {source}")
    print(f"repository: {args.out} (configs {CONFIG_GPU}, {CONFIG_CPU})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
