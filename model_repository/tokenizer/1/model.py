"""Triton python backend: text (TYPE_STRING, one UTF-8 text per row) -> input_ids, attention_mask (INT64).

The encoder's own `tokenizer.json` (copied beside this file by export.onnx_export) run with `tokenizers`:
lower-casing WordPiece with [CLS] ... [SEP], at most `max_tokens` tokens per text (longer texts are truncated,
as SentenceTransformer.encode does; export.onnx_export writes the encoder's own max_seq_length into the copied
tokenizer.json, which wins over the config parameter), padded with [PAD] (id 0, mask 0) to the smallest length
bucket (`length_buckets`, e.g. 16,32,64,128,256) that holds the longest text of the request. Triton batches only
requests of one shape: the buckets let requests of different token counts meet in one text_encoder batch, at the
cost of a few padded (masked) tokens.

Each request is answered on its own: a request holding an empty (or whitespace-only) text, bytes that are not
UTF-8 or a text longer than `max_text_bytes` bytes gets an INVALID_ARG error that names the row and the
reason, and the other requests of the batch are answered as usual.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer


class TextError(ValueError):
    """A text this model refuses (the request's fault)."""


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_tokens = int(params.get("max_tokens", "256"))
        self.max_bytes = int(params.get("max_text_bytes", "65536"))
        path = Path(args["model_repository"]) / args["model_version"] / "tokenizer.json"
        if not path.is_file():
            raise pb_utils.TritonModelException(f"{path} is missing: run `make export` (export.onnx_export copies it)")
        tok = Tokenizer.from_file(str(path))
        if tok.truncation:  # the encoder's max_seq_length, written at export
            self.max_tokens = int(tok.truncation["max_length"])
        tok.enable_truncation(max_length=self.max_tokens)
        tok.no_padding()
        self.tokenizer = tok
        buckets = sorted({int(b) for b in params.get("length_buckets", "").split(",") if b.strip()})
        # no buckets: padded to the request's longest text (requests of different lengths then never batch)
        self.buckets = [b for b in buckets if b < self.max_tokens] + [self.max_tokens] if buckets else []
        self.invalid = getattr(pb_utils.TritonError, "INVALID_ARG", None)

    def texts(self, rows: np.ndarray) -> list[str]:
        out = []
        for i, value in enumerate(rows.reshape(-1)):
            raw = value if isinstance(value, bytes) else str(value).encode()
            if len(raw) > self.max_bytes:
                raise TextError(f"text of row {i} has {len(raw)} bytes, more than max_text_bytes={self.max_bytes}")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TextError(f"text of row {i} is not valid UTF-8 (byte {exc.start}: {exc.reason})") from None
            if not text.strip():
                raise TextError(f"text of row {i} is empty")
            out.append(text)
        return out

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                texts = self.texts(pb_utils.get_input_tensor_by_name(request, "text").as_numpy())
                enc = self.tokenizer.encode_batch(texts)
                longest = max(len(e.ids) for e in enc)
                width = next((b for b in self.buckets if b >= longest), longest)
                ids = np.zeros((len(enc), width), dtype=np.int64)  # (B, T): [PAD] is id 0
                mask = np.zeros((len(enc), width), dtype=np.int64)
                for row, e in enumerate(enc):
                    ids[row, : len(e.ids)] = e.ids
                    mask[row, : len(e.ids)] = 1
                outputs = [pb_utils.Tensor("input_ids", ids), pb_utils.Tensor("attention_mask", mask)]
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            except TextError as exc:
                error = pb_utils.TritonError(f"tokenizer: {exc}", self.invalid) if self.invalid is not None else None
                responses.append(pb_utils.InferenceResponse(error=error or pb_utils.TritonError(f"tokenizer: {exc}")))
            except Exception as exc:  # noqa: BLE001 - one request's failure must not fail its batch-mates
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"tokenizer: {type(exc).__name__}: {exc}"))
                )
        return responses
