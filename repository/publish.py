"""Atomic writes into a model repository: build beside it, verify, then move each model folder into place.

    python -m repository.publish --repo model_repository --prepare STAGE [--models a,b]   # make export, first
    python -m repository.publish --repo model_repository --commit STAGE                   # make export, last
    python -m repository.publish --repo model_repository --recover                        # finish a cut commit

Every writer of a repository (make export, the BYOM importers, serving.rollout) builds whole model folders in
a stage: a folder beside the repository (`<parent>/.<repo>.stage*`, never inside it, where Triton would take
it for a model), on the same file system, so a move is a rename. Nothing in the repository changes until
`commit`, which

1. verifies every artifact of the stage against its recorded SHA-256 (repository.integrity; a file without a
   record fails) and runs the caller's own checks;
2. writes a journal (`<stage>/.commit.json`: the folders to move, the inode of each staged folder);
3. swaps each staged model folder with the repository's in one rename (renameat2 RENAME_EXCHANGE, so a
   reader sees the old folder or the new one, never neither; a plain rename where the folder is new);
4. merges the hashes of the moved folders into `<repo>/integrity.json` (when the stage or the repository
   has one) and removes the stage with the old folders.

A failure before step 3 leaves the repository byte-identical; a failed or killed writer leaves only its stage,
which the next writer removes (or, when it holds a journal, finishes: the journal names every move and the
inodes tell which were done, so a commit cut between two renames is rolled forward, never left half done).
A stage holding a rollout's pending marker (`.rollout.json`, serving.rollout) names a version that entered the
repository but was not yet confirmed by its swap: a dead rollout's version is taken out again.

One writer at a time: every writer of a repository (make export, both importers, serving.rollout, --recover)
holds an exclusive flock on `<parent>/.<repo>.lock` for its whole run (`writer_lock`); a second writer waits
for it. `--hold -- CMD` runs CMD (make export's stage steps) under the lock; the commands inside find the lock
held through an inherited file descriptor (SERVING_WRITER_LOCK) instead of waiting for themselves. The journal,
the manifest and the renamed folders are fsynced, so a power cut cannot leave a journal that names moves the
disk never saw.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from common.files import sha256_file

log = logging.getLogger(__name__)

JOURNAL = ".commit.json"
PENDING = ".rollout.json"  # serving.rollout: a version in the repository its swap has not yet confirmed
OWNER = ".owner"  # the pid of the process that builds the stage
LOCK_ENV = "SERVING_WRITER_LOCK"  # "<fd>:<lock path>" of a writer lock an ancestor process holds
MAKE_STAGE_SUFFIX = ".stage"  # make export's stage: fixed, so the Makefile can name it
_RENAME_EXCHANGE = 2


class PublishError(RuntimeError):
    """The stage failed verification, or the repository could not be updated (one line, what to do)."""


class LockBusy(PublishError):
    """Another live writer holds the repository's writer lock (wait=False)."""


def lock_path(repo: Path) -> Path:
    """`<parent>/.<repo name>.lock`: beside the repository (Triton would take a folder inside it for a model)."""
    repo = Path(repo).absolute()
    return repo.parent / f".{repo.name}.lock"


_held: dict[str, int] = {}  # lock path -> depth, for this process
_held_guard = threading.Lock()


def _inherited(path: Path) -> bool:
    """True when an ancestor holds the lock on `path` and passed its descriptor down (`--hold`)."""
    value = os.environ.get(LOCK_ENV, "")
    fd, _, held = value.partition(":")
    if not fd.isdigit() or held != str(path):
        return False
    try:
        return os.fstat(int(fd)).st_ino == os.stat(path).st_ino
    except OSError:
        return False


@contextmanager
def writer_lock(repo: Path, wait: bool = True, timeout: float | None = None) -> Iterator[Path]:
    """Hold the writer lock of `repo` (re-entrant in a process and under `--hold`); LockBusy when `wait` is
    False (or `timeout` passes) while another process holds it."""
    path = lock_path(repo)
    key = str(path)
    with _held_guard:
        if _held.get(key) or _inherited(path):
            _held[key] = _held.get(key, 0) + 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield path
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115 - held for the block
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            if not wait:
                raise LockBusy(f"another writer (pid {holder}) holds {path}") from None
            log.warning("waiting for the writer lock %s (held by pid %s)", path, holder)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() > deadline:
                        raise LockBusy(f"another writer (pid {holder}) held {path} for {timeout:.0f} s") from None
                    time.sleep(0.1)
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        with _held_guard:
            _held[key] = 1
        try:
            yield path
        finally:
            with _held_guard:
                _held.pop(key, None)
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        f.close()


def hold(repo: Path, cmd: list[str]) -> int:
    """Run `cmd` while holding the writer lock of `repo`; its children see the lock as theirs."""
    with writer_lock(repo) as path:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.set_inheritable(fd, True)
            env = {**os.environ, LOCK_ENV: f"{fd}:{path}"}
            return subprocess.run(cmd, env=env, pass_fds=(fd,)).returncode
        finally:
            os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, text: str) -> None:
    """`path` holds `text` or what it held before, on disk, whatever happens (temp file, fsync, rename, fsync)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def stage_path(repo: Path, tag: str = "") -> Path:
    """`<parent>/.<repo name>.stage[-tag]`: beside the repository, on its file system."""
    repo = Path(repo).absolute()
    return repo.parent / f".{repo.name}{MAKE_STAGE_SUFFIX}{'-' + tag if tag else ''}"


def _stages(repo: Path) -> list[Path]:
    repo = Path(repo).absolute()
    if not repo.parent.is_dir():
        return []
    return sorted(p for p in repo.parent.glob(f".{repo.name}{MAKE_STAGE_SUFFIX}*") if p.is_dir())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(stage: Path) -> int | None:
    try:
        return int((stage / OWNER).read_text().strip())
    except (OSError, ValueError):
        return None


_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one rename (Linux renameat2 RENAME_EXCHANGE); False where the kernel lacks it."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = getattr(_libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):  # old kernel, or a file system without exchange
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


def _move_in(staged: Path, target: Path, old: Path) -> None:
    """Put `staged` at `target`; the folder that was there ends at `old`."""
    if not target.exists():
        os.rename(staged, target)
        return
    if _exchange(staged, target):
        os.rename(staged, old)  # `staged` now names the old folder
        return
    os.rename(target, old)  # no exchange here: the folder is missing between these two renames only
    os.rename(staged, target)


def _artifact_entries(repo: Path, models: Iterable[str]) -> dict[str, dict]:
    from repository import integrity

    wanted = set(models)
    return {
        f.relative_to(repo).as_posix(): {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        for f in integrity.model_files(repo)
        if f.relative_to(repo).parts[0] in wanted
    }


def merge_manifest(repo: Path, models: Iterable[str], had_manifest: bool) -> None:
    """Replace the entries of `models` in `<repo>/integrity.json` with their files' hashes (the others stay)."""
    from repository import integrity

    models = list(models)
    path = repo / integrity.MANIFEST
    if not (had_manifest or path.is_file()):
        return
    with writer_lock(repo):  # read-modify-write: one writer at a time
        try:
            files = integrity.read_manifest(repo) or {}
        except (OSError, ValueError):
            files = {}
        files = {rel: entry for rel, entry in files.items() if rel.split("/", 1)[0] not in models}
        files.update(_artifact_entries(repo, models))
        write_durably(path, json.dumps({"algorithm": "sha256", "files": files}, indent=2, sort_keys=True) + "\n")


def model_folders(stage: Path) -> list[str]:
    return sorted(p.name for p in stage.iterdir() if p.is_dir() and not p.name.startswith("."))


def verify(stage: Path, models: Iterable[str]) -> list[str]:
    """Artifact problems of the staged `models` (repository.integrity, restricted to those folders)."""
    from repository import integrity

    wanted = set(models)
    problems = []
    for line in integrity.verify_repository(stage):
        path = Path(line.split(":", 1)[0])
        try:
            name = path.relative_to(stage).parts[0]
        except (ValueError, IndexError):
            name = ""
        if name in wanted or not name:
            problems.append(line)
    return problems


def commit(
    stage: Path,
    repo: Path,
    models: Iterable[str] | None = None,
    check: Callable[[Path], list[str]] | None = None,
) -> list[str]:
    """Verify the staged model folders and move them into `repo` (see the module docstring); returns the
    names moved. PublishError, with the repository untouched, when verification fails."""

    stage, repo = Path(stage).absolute(), Path(repo).absolute()
    models = model_folders(stage) if models is None else sorted(models)
    if not models:
        raise PublishError(f"{stage} holds no model folder to publish")
    missing = [m for m in models if not (stage / m).is_dir()]
    if missing:
        raise PublishError(f"{stage}: no staged folder for {', '.join(missing)}")
    problems = verify(stage, models) + (check(stage) if check else [])
    if problems:
        shown = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        raise PublishError(f"not published, {repo} is unchanged: {shown}")
    with writer_lock(repo):
        return _commit(stage, repo, models)


def _commit(stage: Path, repo: Path, models: list[str]) -> list[str]:
    from repository import integrity

    repo.mkdir(parents=True, exist_ok=True)
    if os.stat(stage).st_dev != os.stat(repo).st_dev:
        raise PublishError(
            f"{stage} and {repo} are on different file systems: a move would be a copy; "
            "put the repository in a folder of its own file system"
        )
    had_manifest = (stage / integrity.MANIFEST).is_file() or (repo / integrity.MANIFEST).is_file()
    from models import spec

    # a model these dims do not serve (spec.OPTIONAL_MODELS) leaves the repository in the same commit
    retire = [m for m in spec.OPTIONAL_MODELS if m not in spec.MODELS and m not in models and (repo / m).is_dir()]
    journal = {
        "repo": str(repo),
        "models": models,
        "retire": retire,
        "inodes": {m: os.stat(stage / m).st_ino for m in models},
        "manifest": had_manifest,
    }
    for name in models:  # the staged files are on disk before the journal says they may be moved
        for f in (stage / name).rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
    write_durably(stage / JOURNAL, json.dumps(journal, indent=2) + "\n")
    _roll_forward(stage, journal)
    return models


def _roll_forward(stage: Path, journal: dict) -> None:
    repo = Path(journal["repo"])
    old = stage / ".old"
    old.mkdir(exist_ok=True)
    for name in journal["models"]:
        staged = stage / name
        if staged.is_dir() and os.stat(staged).st_ino == journal["inodes"][name]:  # not moved yet
            if (old / name).exists():
                shutil.rmtree(old / name)
            _move_in(staged, repo / name, old / name)
        elif staged.exists():  # swapped, not yet put aside
            os.rename(staged, old / name)
    for name in journal.get("retire", []):
        if (repo / name).is_dir():
            if (old / name).exists():
                shutil.rmtree(old / name)
            os.rename(repo / name, old / name)
            log.info("retired %s from %s: the dims served leave it out (models.spec.OPTIONAL_MODELS)", name, repo)
    fsync_dir(repo)
    # a retired model's files leave the manifest with it (its configs were listed: every file a model loads is)
    merge_manifest(repo, [*journal["models"], *journal.get("retire", [])], journal.get("manifest", False))
    shutil.rmtree(stage, ignore_errors=True)
    log.info("published %s into %s", ", ".join(journal["models"]), repo)


def recover(repo: Path) -> list[str]:
    """Finish every cut commit beside `repo` and remove the stages of writers that are gone; returns what
    was done, one line each. A stage whose writer is alive is left alone."""
    with writer_lock(repo):
        return _recover(repo)


def _recover(repo: Path) -> list[str]:
    done = []
    for stage in _stages(repo):
        owner = _owner(stage)
        if owner is not None and owner != os.getpid() and _alive(owner):
            continue
        if (stage / PENDING).is_file():
            if owner == os.getpid():
                continue  # this process's own rollout, between its move into the repository and its swap
            done.append(_undo_pending(repo, stage))
        elif (stage / JOURNAL).is_file():
            journal = json.loads((stage / JOURNAL).read_text())
            _roll_forward(stage, journal)
            done.append(f"finished the cut commit of {', '.join(journal['models'])} from {stage}")
        elif owner is not None and owner != os.getpid():
            shutil.rmtree(stage, ignore_errors=True)
            done.append(f"removed {stage}, left by process {owner}")
    for line in done:
        log.warning("%s", line)
    return done


def _undo_pending(repo: Path, stage: Path) -> str:
    """A rollout died after its version entered the repository and before its swap was confirmed: take the
    version out (Triton then serves N, the highest version left) and its hashes out of the manifest."""
    pending = json.loads((stage / PENDING).read_text())
    model, version = pending["model"], int(pending["version"])
    target = Path(repo).absolute() / model / str(version)
    if target.is_dir():
        trash = stage / ".old" / f"{model}-{version}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(target, trash)
        fsync_dir(target.parent)
    merge_manifest(Path(repo), [model], had_manifest=(Path(repo) / "integrity.json").is_file())
    shutil.rmtree(stage, ignore_errors=True)
    return f"removed {target}: the rollout that wrote it (process {_owner(stage)}) died before its swap was confirmed"


def new_stage(repo: Path, tag: str | None = None) -> Path:
    """An empty stage beside `repo` owned by this process (stale stages of gone writers removed first)."""
    repo = Path(repo).absolute()
    recover(repo)
    stage = stage_path(repo, tag if tag is not None else str(os.getpid()))
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    (stage / OWNER).write_text(f"{os.getpid()}\n")
    return stage


class Staging:
    """`with Staging(repo) as stage:` write into `stage.repo`, then `stage.commit(names)`; leaving the block
    without a commit (an error, Ctrl-C) removes the stage, so the repository is as it was."""

    def __init__(self, repo: Path, tag: str | None = None):
        self.target = Path(repo)
        self.tag = tag
        self.repo: Path = Path()
        self.committed: list[str] = []

    def __enter__(self) -> Staging:
        self._lock = writer_lock(self.target)
        self._lock.__enter__()  # the whole write, from the stage to the commit, is one writer's
        try:
            self.repo = new_stage(self.target, self.tag)
        except BaseException:
            self._lock.__exit__(*sys.exc_info())
            raise
        return self

    def commit(self, models: Iterable[str] | None = None, check: Callable[[Path], list[str]] | None = None) -> list:
        self.committed = commit(self.repo, self.target, models, check)
        return self.committed

    def __exit__(self, *exc) -> None:
        try:
            if self.repo.exists() and not (self.repo / JOURNAL).is_file() and not (self.repo / PENDING).is_file():
                shutil.rmtree(self.repo, ignore_errors=True)
        finally:
            self._lock.__exit__(*exc)


def prepare(repo: Path, stage: Path, models: Iterable[str], configs_from: Path | None = None) -> Path:
    """make export's stage: the repository's folders of `models` copied in (configs and the artifacts of the
    last export, so unchanged models are not exported again), with the config files of `configs_from` (another
    repository, e.g. the committed one) over them. Copies, never hard links: a stage writes files in place,
    which must not reach the repository through a shared inode."""
    repo, stage = Path(repo).absolute(), Path(stage).absolute()
    with writer_lock(repo):
        return _prepare(repo, stage, models, configs_from)


def _prepare(repo: Path, stage: Path, models: Iterable[str], configs_from: Path | None) -> Path:
    from repository.layout import CONFIG_FILES

    recover(repo)
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)  # no owner file: make's stage is replaced by the next prepare, never removed
    for name in models:
        src = repo / name
        if src.is_dir():
            shutil.copytree(src, stage / name, symlinks=True)
        (stage / name / "1").mkdir(parents=True, exist_ok=True)
        # a python model's code (tokenizer/1/model.py) is part of its config
        for rel in (*CONFIG_FILES, "1/model.py") if configs_from is not None else ():
            config = Path(configs_from) / name / rel
            if config.is_file():
                (stage / name / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(config, stage / name / rel)
    return stage


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, required=True, help="the model repository to publish into")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prepare", type=Path, metavar="STAGE", help="make STAGE from the repository's folders")
    what.add_argument("--commit", type=Path, metavar="STAGE", help="verify STAGE and move its folders in")
    what.add_argument("--recover", action="store_true", help="finish cut commits, remove stale stages")
    what.add_argument(
        "--hold",
        action="store_true",
        help="--hold -- CMD ...: run CMD holding the repository's writer lock (make export's stage steps)",
    )
    p.add_argument("--models", help="comma-separated folders to prepare (default: every model of models/spec.py)")
    p.add_argument("--configs-from", type=Path, metavar="REPO", help="prepare: take the config files from REPO")
    p.add_argument("--check-layout", action="store_true", help="commit: the stage's configs must match the spec")
    p.add_argument(
        "--artifacts", type=Path, help="training artifacts: the configs take the dims they record (models.spec.Dims)"
    )
    return p.parse_args(argv)


def _layout_check(stage: Path) -> list[str]:
    from repository import layout

    return layout.check_layout(stage) + layout.check_ensembles(stage) + layout.check_variants(stage)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = _parse(argv[: argv.index("--")] if "--" in argv else argv)
    if args.hold:
        if not cmd:
            print("repository.publish: error: --hold needs a command after --", file=sys.stderr)
            return 2
        return hold(args.repo, cmd)
    try:
        if args.recover:
            for line in recover(args.repo) or [f"{args.repo}: nothing to recover"]:
                print(line)
        elif args.prepare:
            from models import spec
            from repository.layout import set_dims

            if args.artifacts is not None:
                spec.use_dims_of(args.artifacts)
            names = [m for m in (args.models or ",".join(spec.MODELS)).split(",") if m]
            stage = prepare(args.repo, args.prepare, names, args.configs_from)
            set_dims(stage)
            print(stage)
        else:
            if args.artifacts is not None:
                from models import spec

                spec.use_dims_of(args.artifacts)
            moved = commit(args.commit, args.repo, check=_layout_check if args.check_layout else None)
            print(f"published {', '.join(moved)} into {args.repo}")
    except (PublishError, OSError) as exc:
        print(f"repository.publish: error: {exc}", file=sys.stderr)
        if args.commit and Path(args.commit).is_dir():
            print(f"repository.publish: the stage is kept for inspection: {args.commit}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
