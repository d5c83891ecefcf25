"""serving.publish: a stage beside the repository, verified, moved in folder by folder; a commit cut between two
renames is finished by the next writer; make export writes nothing into REPO but through the last step."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from models import spec
from serving import integrity, publish


def _model(repo: Path, name: str, payload: bytes) -> None:
    """A model folder with one artifact and its record (what an exporter leaves)."""
    version = repo / name / "1"
    version.mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\n')
    onnx = version / spec.ONNX_FP32
    onnx.write_bytes(payload)
    record = {"onnx_sha256": integrity.sha256_file(onnx)}
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
    assert sorted(json.loads((repo / integrity.MANIFEST).read_text())["files"]) == [
        "a/1/model.onnx",
        "b/1/model.onnx",
        "keep/1/model.onnx",
    ]
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
    checks = [line for line in lines if "serving.repository --repo build/x/repo --check-layout" in line]  # reads
    touching = [line for line in lines if "--repo build/x/repo" in line and line not in checks]
    assert [re.search(r"-m (\S+)", line).group(1) for line in touching] == ["serving.publish", "serving.publish"]
    assert f"--prepare {stage}" in touching[0] and f"--commit {stage}" in touching[1]
    assert lines.index(touching[1]) == len(lines) - 1  # the commit is the last step
