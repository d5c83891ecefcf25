"""The Python examples of clients/README.md run as written against the session's Triton."""

from __future__ import annotations

import re

import numpy as np

from models import spec
from serving.server import free_port

README = spec.ROOT / "clients" / "README.md"


def test_every_python_example_of_the_clients_readme_runs(triton, tmp_path):
    key_file = tmp_path / "admin.key"
    key_file.write_text(triton.key)
    text = README.read_text()
    replacements = {
        "gpu-host:8001": f"127.0.0.1:{free_port()}",  # a GPU server that is not there: failover to the next
        "127.0.0.1:8001": triton.grpc_url,
        "127.0.0.1:8000": triton.http_url,
        "build/triton-run/admin.key": str(key_file),
        "n_iter=20": "n_iter=2",
    }
    for old, new in replacements.items():
        assert old in text, f"clients/README.md no longer mentions {old}"
        text = text.replace(old, new)
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) == 6  # sync, async, failover, shared memory, batching, streaming
    namespace: dict = {}
    for block in blocks:  # one namespace: later examples use `windows` and `rng` from the first
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["f"].values.shape == (1000, spec.HORIZON) and namespace["g"].values.shape == (1000, spec.HORIZON)
    assert namespace["ids"].shape == (3, spec.TOP_K)  # the async example's top-k of three users
    # 168 ticks streamed from START answer what the windowed reservoir answers on that window (sync example)
    streamed, windowed = namespace["forecast"], namespace["both"].reservoir[0]
    assert streamed.shape == (spec.HORIZON,)
    np.testing.assert_allclose(streamed, windowed, rtol=1e-4)
    assert namespace["stream"].sequence_id is None  # END closed the sequence on the server
