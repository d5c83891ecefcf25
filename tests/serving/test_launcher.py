"""The local launcher's own hardening (no server needed): loopback unless told, the key file, the backends' environment."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from serving import server


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7"])
def test_a_host_other_than_loopback_is_refused_without_expose(tmp_path, host, capsys):
    with pytest.raises(SystemExit):
        server.parse_args(["--repo", str(tmp_path), "--host", host])
    assert "--expose" in capsys.readouterr().err
    assert server.parse_args(["--repo", str(tmp_path), "--host", host, "--expose"]).expose
    with pytest.raises(server.ServerError, match="not a loopback address"):
        server.TritonServer(tmp_path, host=host).start(timeout=1)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_need_no_flag(tmp_path, host):
    assert server.parse_args(["--repo", str(tmp_path), "--host", host]).host == host


def test_the_generated_key_file_is_created_0600_in_one_call(tmp_path, monkeypatch):
    """The file is never readable by others, not even between its creation and a chmod: no chmod is needed (one
    that fails here would have left a world-readable key behind)."""
    monkeypatch.delenv("TRITON_ADMIN_KEY", raising=False)
    monkeypatch.setattr(Path, "chmod", lambda *a, **k: (_ for _ in ()).throw(OSError("no chmod here")))
    old = os.umask(0o022)
    try:
        try:
            key = server.admin_key(tmp_path, None)
        except OSError:
            key = None
    finally:
        os.umask(old)
    path = tmp_path / "admin.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key and path.read_text().strip() == key
    assert server.admin_key(tmp_path, None) == key  # an existing file is kept


def test_backends_do_not_inherit_the_admin_key(monkeypatch):
    """tritonserver's environment is what every backend (the python backend's stubs run model.py) sees."""
    monkeypatch.setenv("TRITON_ADMIN_KEY", "s3cr3t-key-value")
    monkeypatch.setenv("TRITON_ADMIN_KEY_FILE", "/run/secrets/key")
    env = server.server_env()
    assert "TRITON_ADMIN_KEY" not in env and "TRITON_ADMIN_KEY_FILE" not in env
    assert "s3cr3t-key-value" not in "".join(env.values())


def test_the_session_server_environment_holds_no_key(triton):
    environ = Path(f"/proc/{triton.process.pid}/environ").read_bytes()
    assert b"TRITON_ADMIN_KEY" not in environ and triton.key.encode() not in environ
