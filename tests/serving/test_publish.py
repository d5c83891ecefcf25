"""repository.publish: a stage beside the repository, verified, moved in folder by folder; a commit cut between two
renames is finished by the next writer; make export writes nothing into REPO but through the last step."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.files import sha256_file
from models import spec
from repository import integrity, publish


def _model(repo: Path, name: str, payload: bytes) -> None:
    """A model folder with one artifact and its record (what an exporter leaves)."""
    version = repo / name / "1"
    version.mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\n')
    onnx = version / spec.ONNX_FP32
    onnx.write_bytes(payload)
    record = {"onnx_sha256": sha256_file(onnx)}
    integrity.record_path(onnx).write_text(json.dumps(record))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "model_repository"
    _model(repo, "a", b"old a")
    _model(repo, "keep", b"untouched")
    integrity.write_manifest(repo)
    return repo


def test_a_verified_stage_replaces_each_folder_and_merges_the_manifest(repo):
    with publish.Staging(repo) as stage:
        _model(stage.repo, "a", b"new a")
        _model(stage.repo, "b", b"new b")
        assert stage.commit() == ["a", "b"]
    assert (repo / "a/1/model.onnx").read_bytes() == b"new a" and (repo / "b/1/model.onnx").is_file()
    assert (repo / "keep/1/model.onnx").read_bytes() == b"untouched"
    files = ("config.pbtxt", "1/model.onnx", "1/model.onnx.json")  # every file the model loads, configs too
    assert sorted(json.loads((repo / integrity.MANIFEST).read_text())["files"]) == sorted(
        f"{m}/{f}" for m in ("a", "b", "keep") for f in files
    )
    assert integrity.verify_repository(repo) == [] and not list(repo.parent.glob(".*stage*"))


def test_a_stage_that_fails_verification_changes_nothing(repo):
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    with publish.Staging(repo) as stage:
        _model(stage.repo, "a", b"new a")
        (stage.repo / "a/1/model.onnx").write_bytes(b"changed after its record")
        with pytest.raises(publish.PublishError, match="does not match"):
            stage.commit()
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before
    assert not list(repo.parent.glob(".*stage*"))


def test_a_commit_cut_between_two_renames_is_finished_by_the_next_writer(repo):
    stage = publish.new_stage(repo)
    _model(stage, "a", b"new a")
    _model(stage, "b", b"new b")
    journal = {
        "repo": str(repo),
        "models": ["a", "b"],
        "inodes": {m: os.stat(stage / m).st_ino for m in ("a", "b")},
        "manifest": True,
    }
    (stage / publish.JOURNAL).write_text(json.dumps(journal))
    publish._move_in(stage / "a", repo / "a", stage / "a.old")  # the writer dies after the first move
    (stage / publish.OWNER).write_text("999999999\n")  # ... and its pid is gone
    assert (repo / "a/1/model.onnx").read_bytes() == b"new a" and not (repo / "b").exists()

    done = publish.recover(repo)
    assert len(done) == 1 and "finished the cut commit of a, b" in done[0]
    assert (repo / "b/1/model.onnx").read_bytes() == b"new b"
    assert integrity.verify_repository(repo) == [] and not stage.exists()


def test_a_live_writers_stage_is_left_alone(repo):
    stage = publish.new_stage(repo, "other")  # owned by this (live) process
    (stage / publish.OWNER).write_text(f"{os.getppid()}\n")
    assert publish.recover(repo) == [] and stage.is_dir()
    shutil.rmtree(stage)


def test_folders_are_swapped_in_one_rename(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    assert publish._exchange(a, b)  # Linux renameat2 RENAME_EXCHANGE on this file system
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_make_export_writes_the_repository_only_through_the_commit():
    out = subprocess.run(
        ["make", "-n", "-B", "export", "REPO=build/x/repo", "ARTIFACTS=build/x/a", "VENV=.venv"],
        cwd=spec.ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    lines = [line for line in out.splitlines() if " -m " in line]
    stage = "build/x/.repo.stage"
    writers = [line for line in lines if re.search(r"-m (export|calibration|serving\.integrity)", line)]
    assert writers and all(f"--repo {stage}" in line for line in writers), writers
    checks = [line for line in lines if "repository.layout --repo build/x/repo --check-layout" in line]  # reads
    touching = [line for line in lines if "--repo build/x/repo" in line and line not in checks]
    assert [re.search(r"-m (\S+)", line).group(1) for line in touching] == ["repository.publish"] * 3
    # the stage steps run inside `--hold`: the writer lock is held from the prepare to the commit
    assert "--hold -- " in touching[0] and "export-stage" in touching[0]
    assert lines.index(touching[0]) < lines.index(writers[0])
    assert f"--prepare {stage}" in touching[1] and f"--commit {stage}" in touching[2]
    assert lines.index(touching[2]) == len(lines) - 1  # the commit is the last step


WRITER = """
import shutil, sys, time
from pathlib import Path
from repository import publish
from tests.serving.test_publish import _model
repo, name, how, where = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
flags = repo.parent


def wait_for(flag, seconds):
    deadline = time.monotonic() + seconds
    while not (flags / flag).exists() and time.monotonic() < deadline:
        time.sleep(0.01)


payload = f"new {name} ".encode() * 100000
if how == "importer":  # repository.publish.Staging, as the BYOM importers and rollouts write: once the other is inside
    wait_for("export-inside", 30)
    with publish.Staging(repo) as stage:
        _model(stage.repo, name, payload)
        stage.commit([name])
    (flags / "importer-done").touch()
else:  # make export's way: prepare a stage (no owner), write, commit; paused inside `where` until the importer is
    # done (3 s at most: with the lock it cannot be, it waits for this writer)
    step = getattr(publish, where)

    def paused(*a):
        (flags / "export-inside").touch()
        wait_for("importer-done", 3)
        return step(*a)

    setattr(publish, where, paused)
    stage = publish.prepare(repo, publish.stage_path(repo), [name])
    shutil.rmtree(stage / name)
    _model(stage, name, payload)
    publish.commit(stage, repo, [name])
"""


@pytest.mark.parametrize(
    "where", ["_move_in", "_artifact_entries"], ids=["during-the-renames", "during-the-manifest-merge"]
)
def test_two_writers_at_once_never_lose_a_hash_and_never_replay_each_other(repo, where):
    """make export's commit (prepare, stage, commit) and an importer's Staging at the same time, the importer
    starting while the export is inside its commit: renaming its folders (the importer's recovery used to roll
    the live commit forward under it) or merging the manifest (the importer's hashes used to be overwritten by
    the export's stale copy, and the server then refused to start). With the writer lock the importer waits:
    both commits are whole and the manifest names every file."""
    _model(repo, "b", b"old b")
    integrity.write_manifest(repo)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(repo), name, how, where], cwd=spec.ROOT, stderr=subprocess.PIPE
        )
        for name, how in (("b", "export"), ("a", "importer"))
    ]
    errors = [p.communicate(timeout=120)[1].decode()[-2000:] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert integrity.verify_repository(repo) == []
    assert {"a/1/model.onnx", "b/1/model.onnx", "keep/1/model.onnx"} <= set(integrity.read_manifest(repo))
    assert (repo / "a/1/model.onnx").read_bytes() == b"new a " * 100000
    assert (repo / "b/1/model.onnx").read_bytes() == b"new b " * 100000
    assert not list(repo.parent.glob(".*stage*"))


def test_a_second_writer_waits_for_the_first(repo):
    with publish.writer_lock(repo):
        child = subprocess.run(
            [sys.executable, "-c", "import sys; from repository import publish; "
             "exec('with publish.writer_lock(sys.argv[1], wait=False): pass')", str(repo)],
            cwd=spec.ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert child.returncode != 0 and "LockBusy" in child.stderr
        with publish.writer_lock(repo):  # re-entrant in the holder
            pass
    with publish.writer_lock(repo, wait=False):
        pass


def test_commands_under_hold_find_the_lock_theirs_and_others_wait(repo):
    script = (
        "import sys; from repository import publish; exec('with publish.writer_lock(sys.argv[1], wait=False): pass')"
    )
    assert publish.hold(repo, [sys.executable, "-c", script, str(repo)]) == 0
    marker = repo.parent / "held"
    waiting = f"import time, pathlib; pathlib.Path({str(marker)!r}).touch(); time.sleep(3)"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "repository.publish",
            "--repo",
            str(repo),
            "--hold",
            "--",
            sys.executable,
            "-c",
            waiting,
        ],
        cwd=spec.ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(publish.LockBusy):
            with publish.writer_lock(repo, wait=False):
                pass
    finally:
        assert holder.wait(60) == 0


def test_a_rollout_that_died_after_moving_its_version_in_is_taken_out_by_the_next_writer(repo):
    stage = publish.new_stage(repo, "rollout")
    _model(stage, "a", b"version 2 of a")
    (stage / "a" / "1").rename(stage / "a" / "2")
    (stage / publish.PENDING).write_text(json.dumps({"model": "a", "version": 2, "pid": 999999999}))
    (stage / "a" / "2").rename(repo / "a" / "2")  # moved in; the rollout dies before its swap is confirmed
    publish.merge_manifest(repo, ["a"], had_manifest=True)
    (stage / publish.OWNER).write_text("999999999\n")
    done = publish.recover(repo)
    assert len(done) == 1 and "died before its swap" in done[0]
    assert not (repo / "a" / "2").exists() and (repo / "a/1/model.onnx").read_bytes() == b"old a"
    assert "a/2/model.onnx" not in integrity.read_manifest(repo) and integrity.verify_repository(repo) == []
    assert not stage.exists()
