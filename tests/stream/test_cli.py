"""`python -m clients.stream` against the session server: the commands of the module docstring."""

from __future__ import annotations

import re

import numpy as np

from clients import stream
from models import data


def test_cli_replays_a_csv_series_tick_by_tick_and_summarizes(triton, artifacts, tmp_path, capsys):
    ticks = data.load_series(artifacts, "test")[0, :12]
    path = tmp_path / "prices.csv"
    path.write_text("price\n" + "\n".join(f"{v:.6f}" for v in ticks) + "\n")
    rc = stream.main(["--url", triton.grpc_url, "--series-file", str(path), "--ticks", "10", "--sequence-id", "71"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert len(re.findall(r"^tick +\d+ .* ms ", out, flags=re.M)) == 10
    assert re.search(r"latency per tick: p50 [\d.]+ ms  p99 [\d.]+ ms", out)


def test_cli_streams_many_sequences_over_http_and_reports_batching(triton, artifacts, capsys):
    args = ["--url", triton.http_url, "--protocol", "http", "--artifacts", str(artifacts), "--sequences", "40"]
    rc = stream.main([*args, "--ticks", "5", "--sequence-id", "5000"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "40 sequence(s) x 5 ticks = 200 requests" in out
    inferences, executions = (int(v) for v in re.search(r"(\d+) inferences in (\d+) executions", out).groups())
    assert executions < inferences


def test_cli_fails_with_one_line_when_no_server_answers(artifacts, capsys, tmp_path):
    path = tmp_path / "one.npy"
    np.save(path, np.array([50.0, 51.0], np.float32))
    rc = stream.main(["--url", "127.0.0.1:9", "--series-file", str(path), "--timeout", "2"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
