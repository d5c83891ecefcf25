"""What the stream tests read from a running server besides answers: the backend's state count."""

from __future__ import annotations

import urllib.request

from models import spec

GAUGE = "onnxruntime_py_sequence_states"  # set by serving/backend/model.py after every execution


def live_states(server, model: str = spec.STREAM.name) -> int:
    """Sequences whose state the backend holds (summed over instances), from the metrics endpoint."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        text = r.read().decode()
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(GAUGE + "{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    assert seen, f"no {GAUGE} for {model} on {server.metrics_url}: has the model executed yet?"
    return int(total)
