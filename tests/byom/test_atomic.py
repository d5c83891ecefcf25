"""An import never leaves half a model: a refused option, a failed bound and a killed run each leave the output
repository byte-identical (it already holds an imported model), and the next import cleans up after a killed one.
Issue 16 found a refused import leaving `<name>/` and `<name>_stream/` behind, which stopped the server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.cli import CliError
from models import spec
from repository import integrity
from tests.conftest import snapshot

from .conftest import HAS_RESERVOIRPY, import_esn, save_esn

TINY_ESN = dict(units=30, lr=0.5, sr=0.9, ridge=1e-3, seed=4)
WINDOW = "24"


def stages_beside(repo: Path) -> list[Path]:
    return sorted(repo.parent.glob(f".{repo.name}.stage*"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small ESN and a repository that already serves one import of it (with an integrity manifest)."""
    if not HAS_RESERVOIRPY:
        pytest.skip("optional extra not installed: pip install -e '.[reservoirpy]'")
    root = tmp_path_factory.mktemp("atomic")
    _, path, _ = save_esn(root, "tiny", TINY_ESN)
    repo = root / "model_repository"
    assert import_esn(path, repo, root / "artifacts", "served", "--window", WINDOW) == 0
    integrity.write_manifest(repo)
    return path, repo


@pytest.fixture
def repo(tiny, tmp_path) -> Path:
    dest = tmp_path / "model_repository"
    shutil.copytree(tiny[1], dest)
    return dest


@pytest.mark.skipif(not HAS_RESERVOIRPY, reason="optional extra not installed: pip install -e '.[reservoirpy]'")
def test_a_refused_option_leaves_the_repository_byte_identical(tiny, repo, tmp_path):
    import reservoirpy
    from reservoirpy import ESN

    before = snapshot(repo)
    path = Path(reservoirpy.save(ESN(units=20, feedback=True, seed=1), tmp_path / "fb"))
    shutil.copyfile(tiny[0].parent / "heldout.npy", tmp_path / "heldout.npy")
    with pytest.raises(CliError, match="feedback=True"):
        import_esn(path, repo, tmp_path / "a", "served", "--trust-pickle")  # a pickle we made
    assert snapshot(repo) == before and stages_beside(repo) == []


@pytest.mark.skipif(not HAS_RESERVOIRPY, reason="optional extra not installed: pip install -e '.[reservoirpy]'")
def test_a_failed_bound_leaves_the_repository_byte_identical_and_reports_why(tiny, repo, tmp_path):
    before = snapshot(repo)
    with pytest.raises(CliError, match=r"verification failed, .* is unchanged: served: ONNX vs esn.run"):
        import_esn(tiny[0], repo, tmp_path / "a", "served", "--window", WINDOW, "--bound", "1e-12")
    assert snapshot(repo) == before and stages_beside(repo) == []
    report = json.loads((tmp_path / "a" / "byom" / "served" / "report.json").read_text())
    assert report["passed"] is False and report["bound"]["onnx_vs_reservoirpy_rel_err"]["source"] == "--bound"


@pytest.mark.skipif(not HAS_RESERVOIRPY, reason="optional extra not installed: pip install -e '.[reservoirpy]'")
def test_a_killed_import_leaves_the_repository_byte_identical_and_the_next_import_cleans_up(tiny, repo, tmp_path):
    before = snapshot(repo)
    argv = [sys.executable, "-m", "byom.import_reservoirpy", "--model", str(tiny[0]), "--out-repo", str(repo)]
    argv += ["--artifacts", str(tmp_path / "a"), "--name", "served", "--window", WINDOW, "--calib-count", "8"]
    argv += ["--series", str(tiny[0].parent / "heldout.npy")]
    proc = subprocess.Popen(argv, cwd=spec.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    staged = None
    while time.monotonic() < deadline and proc.poll() is None:
        staged = next(iter(repo.parent.glob(f".{repo.name}.stage*/served/1/{spec.ONNX_FP32}")), None)
        if staged is not None:
            break
        time.sleep(0.02)
    assert staged is not None, "the import never wrote its stage"
    os.kill(proc.pid, signal.SIGKILL)  # mid-run: the ONNX file is being written or verified
    proc.wait(10)
    assert snapshot(repo) == before
    assert [p.name for p in stages_beside(repo)] == [f".{repo.name}.stage-{proc.pid}"]  # left beside, not inside

    assert import_esn(tiny[0], repo, tmp_path / "a", "again", "--window", WINDOW) == 0
    assert stages_beside(repo) == []  # the stale stage of the dead writer is gone
    after = snapshot(repo)
    kept = {k: v for k, v in before.items() if k != integrity.MANIFEST}
    assert {k: v for k, v in after.items() if k in kept} == kept  # nothing it held was touched
    assert {k.split("/")[0] for k in set(after) - set(before)} == {"again", "again_stream"}
    manifest = json.loads((repo / integrity.MANIFEST).read_text())["files"]
    assert {k.split("/")[0] for k in manifest} == {"served", "served_stream", "again", "again_stream"}
    assert integrity.verify_repository(repo) == []
