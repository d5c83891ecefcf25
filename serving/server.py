"""Start a real Triton Inference Server (cpu target) from the nvidia-pytriton wheel.

    python -m serving.server --repo model_repository          # until Ctrl-C / SIGTERM

The wheel ships `tritonserver` 2.51.0, the python backend and the local response cache, but no ONNX
Runtime backend: Triton's own is built from source at set-up (`make backend`, serving.ort_backend). This
module assembles a backend directory (that `onnxruntime` backend; the python backend with the stub for
the running Python, for models that are Python by nature), sets PATH / LD_LIBRARY_PATH as docs/design.md
requires (without the virtualenv first on PATH a python model silently received all-zero inputs), starts
the server on 127.0.0.1 with `--model-config-name=cpu` (`--config-name cpu_fp32` / `cpu_int8`: the other
precision), and waits for readiness with a timeout. A `--host` other than loopback needs `--expose` as well:
this wheel's Triton 2.51 can be stopped by one unauthenticated request (RELIABILITY.md); production runs NGC.

Before starting, what a killed writer left beside the repository is finished or removed (repository.publish.recover,
under the repository's writer lock), then every file a model loads is checked against the SHA-256 recorded at export
(repository.integrity: the provenance record beside each file and `<repo>/integrity.json`); a file that
does not match, has no record, or is missing refuses the start with one line per file; with
`--exclude-unverified` the server starts instead with every other model (explicit model-control mode,
the refused models and the ensembles that use them left unloaded and named with their files in
`unavailable_models()`); `--no-verify` skips the check, for experiments only. `--restart` starts
tritonserver again when it exits unexpectedly (RELIABILITY.md). `--model-control explicit` loads every model
at start and then accepts load / unload through the restricted model-repository API: what
`python -m serving.rollout` needs to replace a model's version without a restart.

The model-repository (load/unload), shared-memory, logging and trace APIs are restricted behind a key: clients
send the header `triton-admin-key: <key>` over HTTP and `triton-grpc-protocol-triton-admin-key`
over gRPC (`common.triton.admin_headers()` builds either). The key comes from `--admin-key-file` or the
TRITON_ADMIN_KEY environment variable, else a random one is written into the run directory (created with mode
0600 in one call); it is never logged, and tritonserver (with every backend it starts) gets an environment
without TRITON_ADMIN_KEY / TRITON_ADMIN_KEY_FILE.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from common.triton import ADMIN_HEADER

log = logging.getLogger(__name__)

# Only health, metadata, statistics and inference stay open: anyone reaching the port could otherwise load or
# unload models, map shared memory, raise the log verbosity (log flooding) or turn tracing on.
RESTRICTED = "model-repository,shared-memory,logging,trace"
CONTROL_MODES = ("none", "explicit")
CACHE_BYTES = 256 * 1024 * 1024
DEFAULT_RUN_DIR = Path("build/triton-run")
# --restart: start tritonserver again if it exits (a crash, an OOM kill)
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


def model_names(repo: Path) -> list[str]:
    """Folders of `repo` that hold a model (a config.pbtxt or configs/)."""
    from repository.integrity import model_dirs

    return [d.name for d in model_dirs(Path(repo))]


def ensemble_steps(repo: Path) -> dict[str, list[str]]:
    """Ensemble name -> the models its steps call, read from each ensemble's config.pbtxt."""
    from common.triton import load_config

    out = {}
    for name in model_names(repo):
        path = Path(repo) / name / "config.pbtxt"
        if path.is_file():
            config = load_config(path)
            if config.platform == "ensemble":
                out[name] = [step.model_name for step in config.ensemble_scheduling.step]
    return out


class ServerError(RuntimeError):
    """The server could not be started or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def pytriton_dir() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise ServerError("nvidia-pytriton is not installed: run `make venv` (it pins nvidia-pytriton==0.7.0)") from exc
    root = Path(pytriton.__file__).resolve().parent / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise ServerError(f"no tritonserver binary under {root}: reinstall nvidia-pytriton==0.7.0")
    return root


def _install(src: Path, dest: Path) -> None:
    """Copy unless an identical file is there (a running stub must not be overwritten: ETXTBSY)."""
    if dest.is_file() and dest.stat().st_size == src.stat().st_size and dest.read_bytes() == src.read_bytes():
        return
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.copy2(src, tmp)
    os.replace(tmp, dest)


def assemble_backends(run_dir: Path) -> Path:
    """Triton's ONNX Runtime backend (built by serving.ort_backend) and its python backend with the stub for
    this Python, in one backend directory."""
    triton = pytriton_dir()
    backends = run_dir / "backends"
    python_dir = backends / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for f in (triton / "backends" / "python").iterdir():
        if f.is_file():
            _install(f, python_dir / f.name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = triton / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"the wheel has no python backend stub for Python {version} ({stub})")
    _install(stub, python_dir / stub.name)
    _link(native_backend(), backends / "onnxruntime")
    return backends


def native_backend() -> Path:
    """The ONNX Runtime backend built at set-up (serving.ort_backend); ServerError saying how to build it."""
    from serving import ort_backend

    try:
        return ort_backend.require()
    except ort_backend.BuildError as exc:
        raise ServerError(str(exc)) from exc


def _link(target: Path, link: Path) -> None:
    """`link` -> `target`, replaced atomically when it points elsewhere."""
    if link.is_symlink() and link.resolve() == target.resolve():
        return
    tmp = link.with_name(link.name + f".tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.resolve(), target_is_directory=True)
    os.replace(tmp, link)


# Never handed to tritonserver: its backends (the python backend's stubs run model.py) inherit its environment,
# and the key reaches Triton on its command line only (RELIABILITY.md).
SECRET_ENV = ("TRITON_ADMIN_KEY", "TRITON_ADMIN_KEY_FILE")


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(pytriton_dir().parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(
        os.pathsep
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def admin_key(run_dir: Path, key_file: Path | None) -> str:
    if key_file is not None:
        key = key_file.read_text().strip()
        if not key:
            raise ServerError(f"admin key file {key_file} is empty")
        return key
    if os.environ.get("TRITON_ADMIN_KEY"):
        return os.environ["TRITON_ADMIN_KEY"]
    path = run_dir / "admin.key"
    try:  # created with mode 0600 in the same call: never readable by others, not even for a moment
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def recover_repository(repo: Path) -> None:
    """What a killed writer left beside `repo` (a cut commit, an unchecked rollout version) is finished or
    removed before Triton reads the repository (repository.publish.recover, under the writer lock; skipped while
    a live writer holds it, since it is then that writer's to finish)."""
    from repository import publish

    try:
        with publish.writer_lock(repo, wait=False):
            publish.recover(repo)
    except publish.LockBusy as exc:
        log.info("not recovering %s: %s", repo, exc)


@dataclass
class TritonServer:
    repo: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    config_name: str = "cpu"
    run_dir: Path = DEFAULT_RUN_DIR
    admin_key_file: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    verify: bool = True  # refuse to start over artifacts that do not match their recorded hashes
    exclude_unverified: bool = False  # instead, start without those models (and the ensembles using them)
    # "explicit": every model loaded at start, then loaded / unloaded only through the model-control API
    # (serving.rollout); "none": Triton's default, the repository is read once at start
    model_control: str = "none"
    expose: bool = False  # bind a non-loopback host (python -m serving.server --expose)
    process: subprocess.Popen | None = None
    key: str = ""
    refused: dict[str, str] = field(default_factory=dict)  # model -> why it was not loaded (verification)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "tritonserver.log"

    def command(self, backends: Path) -> list[str]:
        triton = pytriton_dir()
        restricted = f"{RESTRICTED}:{ADMIN_HEADER}={self.key}"
        return [
            str(triton / "bin" / "tritonserver"),
            f"--model-repository={self.repo.resolve()}",
            f"--model-config-name={self.config_name}",
            f"--backend-directory={backends.resolve()}",
            f"--cache-directory={triton / 'caches'}",
            f"--cache-config=local,size={CACHE_BYTES}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--metrics-config=summary_latencies=true",
            f"--http-restricted-api={restricted}",
            f"--grpc-restricted-protocol={restricted}",
            "--exit-on-error=false",  # a broken model must not take the others down
            "--strict-readiness=false",  # ready while healthy models serve; failed ones are reported
            "--log-verbose=0",
            "--exit-timeout-secs=5",
            *self.control_flags(),
            *self.extra_args,
        ]

    def start(self, timeout: float = 120.0) -> TritonServer:
        if not self.repo.is_dir():
            raise ServerError(f"model repository {self.repo} does not exist")
        if not is_loopback(self.host) and not self.expose:
            raise ServerError(f"{self.host} is not a loopback address: Triton 2.51 is not fit to face a network")
        recover_repository(self.repo)
        if self.verify:
            self.verify_artifacts()
        for port in (self.http_port, self.grpc_port, self.metrics_port):
            with socket.socket() as probe:
                # as tritonserver binds: a port in TIME_WAIT after a previous server is free for it
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((self.host, port))
                except OSError as exc:
                    raise ServerError(f"port {port} on {self.host} is in use ({exc.strerror}): choose another") from exc
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.key = admin_key(self.run_dir, self.admin_key_file)
        backends = assemble_backends(self.run_dir)
        cmd = self.command(backends)
        log.info("starting tritonserver on %s (http), %s (grpc), %s", self.http_url, self.grpc_url, self.metrics_url)
        logfile = open(self.log_path, "wb")  # noqa: SIM115 - owned by the process lifetime
        self.process = subprocess.Popen(
            cmd, stdout=logfile, stderr=subprocess.STDOUT, env=server_env(), start_new_session=True
        )
        logfile.close()
        self.wait_ready(timeout)
        for name, reason in self.unavailable_models().items():
            log.warning("model %s is not ready: %s", name, reason)
        return self

    def control_flags(self) -> list[str]:
        """Model-control flags: explicit mode loading every model but the refused ones, when any were refused;
        explicit mode loading every model with `model_control="explicit"`; else none (Triton's default)."""
        if self.model_control not in CONTROL_MODES:
            raise ServerError(f"model control {self.model_control!r} is not one of {', '.join(CONTROL_MODES)}")
        if self.refused:
            keep = sorted(set(model_names(self.repo)) - set(self.refused))
            return ["--model-control-mode=explicit", *(f"--load-model={m}" for m in keep)]
        if self.model_control == "explicit":
            return ["--model-control-mode=explicit", "--load-model=*"]
        return []

    def verify_artifacts(self) -> None:
        """Raise ServerError naming every artifact that does not match its recorded hash; with
        `exclude_unverified`, record those models (and the ensembles using them) in `refused` instead."""
        from repository import integrity

        self.refused = {}
        problems = integrity.verify_repository(self.repo)
        if problems and self.exclude_unverified:
            by_model = integrity.failed_models(self.repo)
            if "" not in by_model:  # every problem belongs to a model folder
                for model, lines in by_model.items():
                    self.refused[model] = "artifact verification failed: " + "; ".join(lines)
                ensembles = ensemble_steps(self.repo)
                while grown := {
                    e: sorted(set(steps) & set(self.refused))
                    for e, steps in ensembles.items()
                    if e not in self.refused and set(steps) & set(self.refused)
                }:  # ensembles of ensembles: until nothing more is refused
                    for ensemble, bad in grown.items():
                        self.refused[ensemble] = f"uses {', '.join(bad)}, refused by artifact verification"
                for model, why in sorted(self.refused.items()):
                    log.error("not loading model %s: %s", model, why)
                return
        if problems:
            lines = "\n".join(f"  {p}" for p in problems)
            raise ServerError(
                f"refusing to start: {len(problems)} artifact problem(s) in {self.repo}:\n{lines}\n"
                "re-export (`make export`) or restore the files; `--no-verify` skips this check"
            )

    def unavailable_models(self) -> dict[str, str]:
        """Models in the repository that failed to load, with Triton's reason."""
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(self.http_url)
        try:
            index = client.get_model_repository_index(headers={ADMIN_HEADER: self.key})
        finally:
            client.close()
        found = {m["name"]: m.get("reason", "") or m.get("state", "") for m in index if m.get("state") != "READY"}
        return {**found, **self.refused}

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode}:\n{self.tail()}")
            if self.ready():
                return
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"tritonserver not ready after {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=Path("model_repository"), help="model repository")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1); any other than loopback also needs --expose",
    )
    p.add_argument(
        "--expose",
        action="store_true",
        help="allow a --host other than loopback: Triton 2.51 (this wheel) has unauthenticated remote crashes "
        "fixed only in later releases (serving/README.md, RELIABILITY.md); production runs the NGC image",
    )
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--config-name", default="cpu", help="configs/<name>.pbtxt per model (default cpu)")
    p.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="backends, log and key go here")
    p.add_argument("--admin-key-file", type=Path, help=f"key for the restricted APIs ({RESTRICTED})")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    p.add_argument("--no-verify", action="store_true", help="start even if artifacts fail their hash check")
    p.add_argument(
        "--model-control",
        choices=CONTROL_MODES,
        default="none",
        help="explicit: load every model, then accept load/unload through the restricted API "
        "(what `python -m serving.rollout` needs); default none",
    )
    p.add_argument(
        "--exclude-unverified", action="store_true", help="start without the models whose artifacts fail the check"
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help=f"start tritonserver again when it exits unexpectedly (at most {MAX_RESTARTS} times in "
        f"{RESTART_WINDOW_S:.0f} s; each crashed server's log is kept)",
    )
    args = p.parse_args(argv)
    if not is_loopback(args.host) and not args.expose:
        p.error(
            f"--host {args.host} is not a loopback address: Triton 2.51 (this wheel) can be stopped by one "
            "unauthenticated request (RELIABILITY.md); pass --expose as well if you mean it"
        )
    if not args.repo.is_dir():
        p.error(f"model repository {args.repo} does not exist")
    if args.admin_key_file is not None and not args.admin_key_file.is_file():
        p.error(f"admin key file {args.admin_key_file} does not exist")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    server = TritonServer(
        args.repo,
        args.host,
        args.http_port,
        args.grpc_port,
        args.metrics_port,
        args.config_name,
        args.run_dir,
        args.admin_key_file,
        verify=not args.no_verify,
        exclude_unverified=args.exclude_unverified,
        model_control=args.model_control,
        expose=args.expose,
    )
    stop = {"now": False}

    def on_signal(signum, _frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.start(args.timeout)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Triton ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}")
    print(f"log: {server.log_path}; restricted APIs ({RESTRICTED}) need header '{ADMIN_HEADER}'")
    restarts: list[float] = []
    try:
        while True:
            while not stop["now"] and server.process.poll() is None:
                time.sleep(0.5)
            if stop["now"] or not args.restart:
                break
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW_S] + [now]
            code = server.process.returncode
            crash_log = server.log_path.with_name(f"tritonserver.crash{len(restarts)}-{int(time.time())}.log")
            server.log_path.replace(crash_log)
            if len(restarts) > MAX_RESTARTS:
                print(
                    f"error: tritonserver exited {len(restarts)} times within {RESTART_WINDOW_S:.0f} s; "
                    f"giving up (last log: {crash_log})",
                    file=sys.stderr,
                )
                return 1
            log.error("tritonserver exited with code %s (log kept in %s): restarting (--restart)", code, crash_log)
            try:
                server.start(args.timeout)
            except ServerError as exc:
                print(f"error: restart failed: {exc}", file=sys.stderr)
                return 1
            print(f"Triton ready again after exit code {code}: HTTP {server.http_url}  gRPC {server.grpc_url}")
    finally:
        server.stop()
    if server.process.returncode not in (0, -signal.SIGTERM, None) and not stop["now"]:
        print(f"error: tritonserver exited with code {server.process.returncode}:\n{server.tail()}", file=sys.stderr)
        return 1
    print("Triton stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
