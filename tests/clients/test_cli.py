"""`python -m clients ...` as a user runs it: every subcommand in a subprocess, bad input gives one line and exit 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models import spec

TIMEOUT_S = 120


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "clients", *map(str, args)],
        cwd=spec.ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(p: subprocess.Popen) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=TIMEOUT_S)
    return p.returncode, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory, artifacts):
    from models import data

    d = tmp_path_factory.mktemp("cli")
    x, _ = data.load_windows(artifacts, "test")
    np.savetxt(d / "windows.csv", x[:2], delimiter=",", header="168 values per row")
    np.save(d / "windows.npy", x[:2])
    np.save(d / "queries.npy", data.load_queries(artifacts, "test", 2))
    np.savetxt(d / "ids.csv", data.load_user_ids(artifacts, "test", 3), fmt="%d")
    np.save(d / "f24.npy", np.ones((2, spec.HORIZON), np.float32))
    np.savetxt(d / "narrow.csv", np.ones((2, 100)), delimiter=",")
    (d / "words.csv").write_text("a,b,c\n1,2,3\n")
    np.savetxt(d / "nan.csv", np.full((1, spec.INPUT_SIZE), np.nan), delimiter=",")
    return d


def test_every_subcommand_runs_and_prints_a_readable_table_or_json(triton, artifacts, repo, files):
    g = ["--url", triton.grpc_url, "--artifacts", artifacts]
    h = ["--url", triton.http_url, "--protocol", "http", "--artifacts", artifacts]
    runs = {  # started together: the interpreters start up in parallel
        "nhits": start("nhits", *g, "--rows", "2"),
        "reservoir": start("reservoir", *h, "--input", files / "windows.npy"),
        "forecast": start("forecast", *g, "--input", files / "windows.csv", "--json"),
        "forecast_blend": start("forecast-blend", *g, "--nhits", files / "f24.npy", "--reservoir", files / "f24.npy"),
        "similarity": start("similarity", *h, "--input", files / "queries.npy"),
        "user_embedding": start("user_embedding", *g, "--ids", "1,2"),
        "recommend": start("recommend", *g, "--input", files / "ids.csv", "--repo", repo),
        "health": start("health", "--url", triton.grpc_url),
    }
    out = {}
    for name, p in runs.items():
        code, stdout, stderr = finish(p)
        assert code == 0, f"{name}: {stderr}"
        out[name] = stdout
    assert "hour" in out["nhits"] and "#1 actual" in out["nhits"] and "MAE per row" in out["nhits"]
    assert out["reservoir"].startswith("reservoir: 2 row(s) from http://")
    blob = json.loads(out["forecast"])
    assert np.asarray(blob["values"]).shape == (2, spec.HORIZON) and len(blob["nhits"]) == 2
    assert "#0 forecast" in out["forecast_blend"]
    assert out["similarity"].count("\n") == 2 + 2 * spec.TOP_K and "item id" in out["similarity"]
    assert "norm" in out["user_embedding"]
    assert len(out["recommend"].splitlines()) == 2 + 3 * spec.TOP_K
    assert "ready" in out["health"]


BAD_INPUT = {  # case: (arguments, what the one-line error must say)
    "wrong width": (["nhits", "--input", "{d}/narrow.csv"], "unexpected shape for input 'window' for model 'nhits'"),
    "NaN": (["nhits", "--input", "{d}/nan.csv"], "contains NaN or Inf (batch row 0)"),
    "not numbers": (["similarity", "--input", "{d}/words.csv"], "cannot read"),
    "missing file": (["forecast", "--input", "{d}/missing.npy"], "does not exist"),
    "bad id list": (["recommend", "--ids", "1,x"], "expected comma-separated integers"),
    "id out of range": (["recommend", "--ids", "-3"], "out of range [0,"),
    "half a blend": (["forecast_blend", "--nhits", "{d}/f24.npy"], "give both --nhits and --reservoir"),
}


def test_bad_input_gives_a_one_line_error_and_a_nonzero_exit_before_any_network_call(files, repo):
    # nothing listens at port 9: every one of these is refused before anything is sent
    runs = {
        case: (start(*[a.format(d=files) for a in args], "--url", "127.0.0.1:9", "--repo", repo), message)
        for case, (args, message) in BAD_INPUT.items()
    }
    for case, (p, message) in runs.items():
        code, out, err = finish(p)
        assert code == 1 and out == "", case
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, (case, err)


def test_a_server_that_is_down_is_one_line_too(files):
    code, _, err = finish(start("nhits", "--input", files / "windows.npy", "--url", "127.0.0.1:9", "--timeout", "2"))
    assert code == 1 and err.count("\n") == 1 and "no endpoint answered" in err


def test_usage_errors_exit_with_2():
    code, _, err = finish(start("nhits", "--rows", "0"))
    assert code == 2 and "--rows must be >= 1" in err


@pytest.mark.slow
def test_the_demo_starts_a_server_calls_everything_and_stops_it(repo: Path, artifacts: Path):
    code, out, err = finish(start("demo", "--repo", repo, "--artifacts", artifacts, "--rows", "2"))
    assert code == 0, err
    assert "gRPC and HTTP agree on every output" in out and "ids identical = True" in out
    assert "Triton stopped" in out
