"""`make export SERIES=... CATALOG=... USERS=...` on a user's own files (export/README.md, "Your data"): another window
and horizon (48 -> 12), a catalog and users of dimension 32 with ids of their own. The repository it writes into
already serves the project's models: a run killed in the middle leaves it byte-identical; the next run replaces
them, and a real Triton answers with the user's ids (exactly the top-10 numpy computes from the user's files).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models import spec
from serving.server import TritonServer, free_port
from tests.conftest import snapshot

pytestmark = pytest.mark.slow

INPUT, H, DIM = 48, 12, 32
ITEM_IDS = 10_000 + 7 * np.arange(300)
USER_IDS = 500 + 3 * np.arange(200)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("your-data")
    rng = np.random.default_rng(0)
    frames = []
    for uid, n in (("A", 400), ("B", 420), ("C", 450)):  # series of different lengths, hourly, positive
        t = np.arange(n)
        y = 50 + 10 * np.sin(2 * np.pi * t / 24) + 0.3 * rng.standard_normal(n).cumsum() + 5 * (uid == "B")
        frames.append(pd.DataFrame({"unique_id": uid, "ds": pd.date_range("2026-01-01", periods=n, freq="h"), "y": y}))
    pd.concat(frames).to_csv(root / "prices.csv", index=False)
    items = rng.standard_normal((len(ITEM_IDS), DIM)).astype(np.float32)
    users = rng.standard_normal((len(USER_IDS), DIM)).astype(np.float32)
    pd.DataFrame({"item_id": ITEM_IDS, "embedding": list(items)}).to_parquet(root / "items.parquet")
    pd.DataFrame({"user_id": USER_IDS, "embedding": list(users)}).to_parquet(root / "users.parquet")
    return {"SERIES": root / "prices.csv", "CATALOG": root / "items.parquet", "USERS": root / "users.parquet"}


def make_export(files: dict[str, Path], artifacts: Path, repo: Path) -> list[str]:
    args = [f"{k}={v}" for k, v in files.items()] + [f"INPUT_SIZE={INPUT}", f"HORIZON={H}"]
    args += ["SIZE=small", f"ARTIFACTS={artifacts}", f"REPO={repo}", "CONFIGS=model_repository"]
    return ["make", "--no-print-directory", "export", *args]


@pytest.fixture(scope="module")
def your_export(files, repo: Path, tmp_path_factory) -> dict:
    """The test repository (the project's models) copied, a make export killed mid-way into it, then a full one."""
    root = tmp_path_factory.mktemp("your-export")
    target, artifacts = root / "model_repository", root / "artifacts"
    shutil.copytree(repo, target)
    before = snapshot(target)
    stage = root / f".{target.name}.stage"
    proc = subprocess.Popen(
        make_export(files, artifacts, target),
        cwd=spec.ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    exporting = stage / "nhits" / "1"  # export.onnx_export drops the old record, then writes model.onnx anew
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if exporting.is_dir() and not (exporting / "model.onnx.json").exists():
            break
        time.sleep(0.02)
    killed_in_stage = proc.poll() is None and stage.is_dir()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    after_kill = snapshot(target)
    done = subprocess.run(
        make_export(files, artifacts, target), cwd=spec.ROOT, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {
        "repo": target,
        "artifacts": artifacts,
        "killed_in_stage": killed_in_stage,
        "unchanged_after_kill": after_kill == before,
        "stage_left": not stage.exists(),
    }


@pytest.fixture(scope="module")
def your_server(your_export, tmp_path_factory):
    server = TritonServer(
        your_export["repo"],
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        run_dir=tmp_path_factory.mktemp("your-run"),
    )
    server.start(timeout=180)
    assert server.unavailable_models() == {}, server.tail()
    yield server
    server.stop()


def infer(server: TritonServer, model: str, name: str, array: np.ndarray) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        result = client.infer(model, [tensor])
        return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}
    finally:
        client.close()


def test_a_killed_make_export_leaves_the_repository_byte_identical(your_export):
    assert your_export["killed_in_stage"], "make was not killed while writing its stage"
    assert your_export["unchanged_after_kill"]
    assert your_export["stage_left"]  # the next run replaced the stage and committed it


def test_recommend_answers_with_the_users_own_ids_exactly_as_numpy_does(files, your_server):
    items, users = pd.read_parquet(files["CATALOG"]), pd.read_parquet(files["USERS"])
    catalog = np.stack(items["embedding"]).astype(np.float64)
    vectors = np.stack(users["embedding"]).astype(np.float64)
    catalog /= np.linalg.norm(catalog, axis=1, keepdims=True)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = np.array([0, 7, 199])
    got = infer(your_server, "recommend", "user_id", USER_IDS[rows].reshape(-1, 1).astype(np.int64))
    scores = vectors[rows] @ catalog.T
    want = ITEM_IDS[np.argsort(-scores, axis=1)[:, : spec.TOP_K]]
    assert np.array_equal(got["ids"], want)
    assert np.allclose(got["scores"], np.sort(scores, axis=1)[:, ::-1][:, : spec.TOP_K], atol=1e-5)


def test_an_id_that_is_not_a_user_answers_the_sentinel(your_server):
    got = infer(your_server, "recommend", "user_id", np.array([[USER_IDS[0] + 1], [USER_IDS[1]]], np.int64))
    assert (got["ids"][0] == -1).all() and np.isnan(got["scores"][0]).all()
    assert set(got["ids"][1].tolist()) <= set(ITEM_IDS.tolist())


def test_an_items_own_vector_finds_that_item_first(files, your_server):
    items = pd.read_parquet(files["CATALOG"])
    query = np.stack(items["embedding"][[3, 250]]).astype(np.float32)
    got = infer(your_server, "similarity", "query", query)
    assert got["ids"][:, 0].tolist() == [int(ITEM_IDS[3]), int(ITEM_IDS[250])]


def test_the_forecasters_serve_the_chosen_window_and_horizon(files, your_server, your_export):
    series = pd.read_csv(files["SERIES"])
    window = series[series.unique_id == "C"]["y"].to_numpy(np.float32)[-INPUT:][None]
    got = infer(your_server, "forecast", "window", window)
    assert {k: v.shape for k, v in got.items()} == {
        n: (1, H) for n in ("forecast", "nhits_forecast", "reservoir_forecast")
    }
    assert np.isfinite(got["forecast"]).all()
    report = (your_export["artifacts"] / "reports" / "train.md").read_text()
    assert str(files["SERIES"]) in report and f"windows of {INPUT} -> {H} values" in report
    assert "your series from" in report and "3 series of 400 to 450 values" in report
    assert "synthetic hourly" not in report  # the data is named as what it is


def test_the_export_readme_shows_the_command(files):
    readme = (spec.ROOT / "export" / "README.md").read_text()
    assert "## Your data" in readme
    for var in ("SERIES=", "CATALOG=", "USERS=", "INPUT_SIZE=", "HORIZON="):
        assert var in readme.split("## Your data", 1)[1].split("\n## ", 1)[0], var


def test_search_leaves_the_repository_when_the_catalog_is_not_in_the_encoders_space(your_export, your_server):
    """A catalog of dimension 32 cannot be searched with all-MiniLM-L6-v2's 384-dim text embeddings: make export
    retires the search ensemble (models.spec.OPTIONAL_MODELS); the tokenizer and the encoder still serve."""
    assert DIM != spec.TEXT_DIM and not (your_export["repo"] / "search").exists()
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(your_server.http_url)
    try:
        assert client.is_model_ready("tokenizer") and client.is_model_ready("text_encoder")
        assert not client.is_model_ready("search")
    finally:
        client.close()
