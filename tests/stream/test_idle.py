"""Idle sequences are released by Triton's sequence batcher, and with them their implicit state.

The session server keeps the shipped 60 s idle timeout, too long to wait for in a test, so this
module starts its own server over a one-model repository: the real reservoir_stream ONNX file and
the shipped cpu config with only max_sequence_idle_microseconds shortened.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients.stream import replay, replay_many
from models import data, spec
from serving.server import TritonServer, free_port

IDLE_S = 2.0  # long enough for 300 sequences x 3 ticks on two busy cores, short enough to wait for
N_SEQUENCES = 300


@pytest.fixture(scope="module")
def short_idle(repo, tmp_path_factory):
    root = tmp_path_factory.mktemp("stream-idle")
    model = root / "repo" / spec.STREAM.name
    (model / "configs").mkdir(parents=True)
    (model / "1").mkdir()
    config, n = re.subn(
        r"max_sequence_idle_microseconds: \d+",
        f"max_sequence_idle_microseconds: {int(IDLE_S * 1e6)}",
        (repo / spec.STREAM.name / "configs" / "cpu.pbtxt").read_text(),
    )
    assert n == 1, "the cpu config of reservoir_stream no longer sets max_sequence_idle_microseconds"
    (model / "configs" / "cpu.pbtxt").write_text(config)
    for name in (spec.ONNX_FP32, spec.ONNX_FP32 + ".json"):  # the file and its provenance record (verified)
        (model / "1" / name).symlink_to(spec.version_dir(spec.STREAM.name, repo) / name)
    server = TritonServer(
        root / "repo",
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        run_dir=root / "run",
    )
    server.start(timeout=120)
    yield server
    server.stop()


def test_idle_sequences_are_released_and_a_new_start_begins_from_zero_state(short_idle, artifacts):
    series = data.load_series(artifacts, "test")
    rows = series[np.arange(N_SEQUENCES) % series.shape[0], :3]
    replay_many(short_idle.grpc_url, rows, first_sequence_id=1, end=False)  # 300 sequences left open
    raw = grpcclient.InferenceServerClient(short_idle.grpc_url)
    tick = grpcclient.InferInput("tick", [1, 1], "FP32")
    tick.set_data_from_numpy(rows[6, :1].reshape(1, 1))
    try:
        raw.infer(spec.STREAM.name, [tick], sequence_id=7, client_timeout=30)  # still held: continues
        time.sleep(IDLE_S * 2 + 0.5)
        # Triton has released them: a tick that continues one (no START) is refused ...
        for sequence_id in (1, 7, N_SEQUENCES):
            with pytest.raises(InferenceServerException, match="must specify the START flag"):
                raw.infer(spec.STREAM.name, [tick], sequence_id=sequence_id, client_timeout=30)
    finally:
        raw.close()
    # ... and a sequence started again under an old id begins from the zero state, like a fresh id.
    again, _ = replay(short_idle.grpc_url, rows[6], sequence_id=7)
    fresh, _ = replay(short_idle.grpc_url, rows[6], sequence_id=N_SEQUENCES + 1)
    np.testing.assert_allclose(again, fresh, rtol=1e-5)
