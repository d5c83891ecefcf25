"""Copies of the model repository with edited configs (version files linked, so a copy costs nothing), and
real servers over them: `serving.server.TritonServer` (tritonserver 2.51.0 of the pytriton wheel)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from common.triton import load_config
from serving.server import ServerError, TritonServer, free_port

log = logging.getLogger(__name__)

Edit = Callable[[str, mc.ModelConfig], None]


def models_in(repo: Path) -> list[str]:
    return sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())


def copy_repository(
    src: Path,
    dst: Path,
    models: Iterable[str] | None = None,
    edit: Edit | None = None,
    variants: dict[str, tuple[str, Edit | None]] | None = None,
    config: str = "cpu",
) -> Path:
    """Copy configs of `models` (default all) from src to dst, apply `edit(name, cfg)` to the config each
    model is served with (configs/<config>.pbtxt, or config.pbtxt for ensembles), link the version files.
    `variants` adds models served from another one's config: {new_name: (source_name, edit)}."""
    src, dst = Path(src).resolve(), Path(dst)
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    wanted = list(models) if models is not None else models_in(src)
    jobs = [(name, name, edit) for name in wanted] + [(n, s, e) for n, (s, e) in (variants or {}).items()]
    for name, source, fn in jobs:
        sdir, ddir = src / source, dst / name
        (ddir / "1").mkdir(parents=True)
        for f in sorted((sdir / "1").iterdir()) if (sdir / "1").is_dir() else []:
            if f.is_file() and f.name != ".gitkeep":
                os.symlink(f.resolve(), ddir / "1" / f.name)
        mine = f"configs/{config}.pbtxt"
        served = mine if (sdir / mine).is_file() else "config.pbtxt"
        for rel in [r for r in ("config.pbtxt", mine) if (sdir / r).is_file()]:
            (ddir / rel).parent.mkdir(parents=True, exist_ok=True)
            if rel == served and (fn is not None or name != source):
                cfg = load_config(sdir / rel)
                cfg.name = name
                if fn is not None:
                    fn(name, cfg)
                (ddir / rel).write_text(text_format.MessageToString(cfg))
            else:
                shutil.copy2(sdir / rel, ddir / rel)
    return dst


def cache_off(_name: str, cfg: mc.ModelConfig) -> None:
    if cfg.HasField("response_cache"):
        cfg.response_cache.enable = False


def cache_on(_name: str, cfg: mc.ModelConfig) -> None:
    cfg.response_cache.enable = True


def batching_off(name: str, cfg: mc.ModelConfig) -> None:
    cache_off(name, cfg)
    cfg.ClearField("dynamic_batching")


def _ready(server: TritonServer, model: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{model}/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def serve(
    repo: Path, run_dir: Path, timeout: float = 300.0, tries: int = 3, config: str = "cpu"
) -> Iterator[TritonServer]:
    """A real tritonserver over `repo` on free ports, every model ready; stopped on exit. A free port can be
    taken between choosing and binding it (other servers run here): the server is then started on new ports."""
    last: Exception | None = None
    for _ in range(tries):
        ports = {f"{k}_port": free_port() for k in ("http", "grpc", "metrics")}
        server = TritonServer(repo, **ports, run_dir=run_dir, config_name=config)
        try:
            server.start(timeout)
            deadline, pending = time.monotonic() + timeout, models_in(repo)
            time.sleep(0.5)
            while server.process.poll() is None and (pending := [m for m in pending if not _ready(server, m)]):
                if time.monotonic() > deadline:
                    raise ServerError(f"models not ready after {timeout:.0f} s: {pending}\n{server.tail()}")
                time.sleep(0.5)
            if server.process.poll() is not None:
                raise ServerError(f"tritonserver exited while its models loaded:\n{server.tail()}")
        except ServerError as exc:
            server.stop()
            last = exc
            log.warning("tritonserver did not start (%s); trying new ports", str(exc).splitlines()[0])
            continue
        try:
            yield server
        finally:
            server.stop()
        return
    raise ServerError(f"tritonserver did not start in {tries} tries: {last}")


@dataclass(frozen=True)
class Remote:
    """A server this run did not start (`perf.run --url`): measured where it is, never stopped."""

    grpc_url: str
    http_url: str


def server_version(http_url: str) -> str:
    with urllib.request.urlopen(f"http://{http_url}/v2", timeout=5) as r:
        return json.load(r).get("version", "?")
