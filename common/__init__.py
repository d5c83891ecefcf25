"""What every stage uses: the one-line CLI convention, file hashes and JSON, ONNX Runtime sessions and
Triton's model config. It imports no stage (import-linter, pyproject.toml, keeps it so)."""
