"""What the stages share about Triton: its model config text and the header of its restricted APIs."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

# Config data types -> numpy dtype names
DTYPES = {
    mc.TYPE_FP32: "float32",
    mc.TYPE_INT64: "int64",
    mc.TYPE_INT32: "int32",
    mc.TYPE_UINT64: "uint64",
    mc.TYPE_STRING: "object",
}
# The header the server's restricted APIs (`--http-restricted-api`, `--grpc-restricted-protocol`) demand
ADMIN_HEADER = "triton-admin-key"


def load_config(path: Path) -> mc.ModelConfig:
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except text_format.ParseError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def admin_headers(key: str, protocol: str = "http") -> dict[str, str]:
    """Headers that unlock the restricted APIs. gRPC metadata carries Triton's protocol prefix."""
    name = ADMIN_HEADER if protocol == "http" else f"triton-grpc-protocol-{ADMIN_HEADER}"
    return {name: key}
