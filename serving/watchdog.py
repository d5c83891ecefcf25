"""Bring a model back when its python backend stub dies.

Found here (tests/reliability/test_faults.py, RELIABILITY.md): when the stub process of a model dies,
Triton 2.51's python backend does not restart it. The model stays READY, every request to it (and to the
ensembles that use it) fails after about 1 s with `Stub process '<model>_0_0' is not healthy.`, and the
server's shutdown then waits the whole --exit-timeout-secs. Reloading the model through the
model-repository API starts a fresh stub; that needs `--model-control-mode=explicit --load-model=*`
(in the default mode NONE the load API is refused, and a load of an unchanged model is a no-op, so the
watchdog unloads first).

    dog = StubWatchdog(server).start()   # server: serving.server.TritonServer started with the flags above
    ...
    dog.stop(); dog.events                # [{"model", "instance", "detected_s", "recovered_s", "seconds"}]
"""

from __future__ import annotations

import logging
import threading
import time

from serving import procs

log = logging.getLogger(__name__)

EXPLICIT_FLAGS = ["--model-control-mode=explicit", "--load-model=*"]


class StubWatchdog:
    def __init__(self, server, interval_s: float = 0.5, ready_timeout_s: float = 120.0):
        self.server = server
        self.interval_s = interval_s
        self.ready_timeout_s = ready_timeout_s
        self.expected: dict[str, str] = {}  # instance -> model
        self.events: list[dict] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()

    def start(self) -> StubWatchdog:
        self.expected = {name: p.model for name, p in procs.stubs(self.server.process.pid).items()}
        log.info("watching %d python backend stubs", len(self.expected))
        self._thread = threading.Thread(target=self._loop, daemon=True, name="stub-watchdog")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ready_timeout_s + 10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.server.process is None or self.server.process.poll() is not None:
                return
            try:
                self.check_once()
            except Exception:  # noqa: BLE001 - the watchdog must outlive one failed reload
                log.exception("stub watchdog check failed")

    def check_once(self) -> list[str]:
        """Reload every model with a stub gone since the last check; returns the models reloaded."""
        live = procs.stubs(self.server.process.pid)
        dead = {inst: model for inst, model in self.expected.items() if inst not in live}
        reloaded = []
        for model in sorted(set(dead.values())):
            detected = time.monotonic()
            instances = sorted(i for i, m in dead.items() if m == model)
            log.warning("python backend stub(s) %s of model %s died: reloading the model", instances, model)
            error = self.reload(model)
            event = {
                "model": model,
                "instances": instances,
                "detected_s": round(detected - self._t0, 3),
                "recovered_s": None if error else round(time.monotonic() - self._t0, 3),
                "seconds": None if error else round(time.monotonic() - detected, 3),
                "error": error,
            }
            self.events.append(event)
            if not error:
                reloaded.append(model)
        if reloaded:
            self.expected = {name: p.model for name, p in procs.stubs(self.server.process.pid).items()}
        return reloaded

    def reload(self, model: str) -> str | None:
        """Unload and load `model` with the admin key; wait until it is ready. None, or what went wrong."""
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        from serving.server import ADMIN_HEADER

        headers = {ADMIN_HEADER: self.server.key}
        client = httpclient.InferenceServerClient(self.server.http_url, network_timeout=self.ready_timeout_s)
        try:
            client.unload_model(model, headers=headers)
            client.load_model(model, headers=headers)
            deadline = time.monotonic() + self.ready_timeout_s
            while not client.is_model_ready(model):
                if time.monotonic() > deadline:
                    return f"{model} not ready {self.ready_timeout_s:.0f} s after the reload"
                time.sleep(0.1)
            # Ensembles that use the model are reloaded by Triton with it; wait for those too.
            for entry in client.get_model_repository_index(headers=headers):
                if entry.get("state") == "LOADING":
                    while client.get_model_repository_index(headers=headers) and not client.is_model_ready(
                        entry["name"]
                    ):
                        if time.monotonic() > deadline:
                            break
                        time.sleep(0.1)
            return None
        except InferenceServerException as exc:
            return f"reload of {model} failed: {exc}"
        finally:
            client.close()
