"""The sentence encoder: a BERT-family sentence-transformers model + its pooling (+ L2 normalisation).

The default is all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide, mean pooling, normalised), packaged in a registry
wheel; `make export ENCODER=path/to/folder` exports another one from a local sentence-transformers folder.

forward(input_ids (B, T) int64, attention_mask (B, T) int64) -> embedding (B, D) float32, what
`SentenceTransformer(folder).encode(texts)` returns for the same tokens. A row with no attended token (an
all-zero mask) answers NaN: there is nothing to pool (clients.validate names it).

What a folder must hold, read from its own files (EncoderConfig.read, one line per problem, before anything is
trained): modules.json listing Transformer, Pooling and optionally Normalize (nothing else: a Dense or another
module would change the embedding); config.json of model_type "bert" without custom code (auto_map);
model.safetensors (a pickled pytorch_model.bin would run code on load: refused); tokenizer.json (the served
tokenizer runs it with `tokenizers`); sentence_bert_config.json (max_seq_length); the pooling folder's
config.json with exactly one of mean or CLS pooling.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

# module kinds of modules.json, by class name: sentence-transformers 2-5 write sentence_transformers.models.Pooling,
# 6 writes sentence_transformers.sentence_transformer.modules.pooling.Pooling
TRANSFORMER, POOLING, NORMALIZE = "Transformer", "Pooling", "Normalize"
POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
UNSUPPORTED_POOLING = (
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)
MODEL_TYPES = ("bert",)


class EncoderError(ValueError):
    """One line: what is wrong with an encoder folder and what to do."""


@dataclass(frozen=True)
class EncoderConfig:
    pooling: str  # "mean" | "cls"
    normalize: bool
    dim: int  # hidden size = embedding dimension
    heads: int
    layers: int
    vocab_size: int
    max_tokens: int  # sentence_bert_config.json max_seq_length (truncation)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def read(cls, folder: Path) -> EncoderConfig:
        folder = Path(folder)

        def load(rel: str) -> object:
            path = folder / rel
            if not path.is_file():
                raise EncoderError(f"{folder}: {rel} is missing: expected a sentence-transformers folder")
            try:
                return json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise EncoderError(f"{path}: not valid JSON ({exc})") from None

        if not folder.is_dir():
            raise EncoderError(f"{folder} is not a directory (ENCODER names a sentence-transformers folder)")
        modules = load("modules.json")
        types = [str(m.get("type", "")) for m in modules] if isinstance(modules, list) else []
        kinds = [t.rsplit(".", 1)[-1] if t.startswith("sentence_transformers.") else t for t in types]
        modules = [m | {"type": k} for m, k in zip(modules if types else [], kinds, strict=True)]
        if not kinds or kinds[0] != TRANSFORMER or POOLING not in kinds:
            raise EncoderError(f"{folder}/modules.json: expected Transformer then Pooling modules, got {kinds}")
        if other := [k for k in kinds if k not in (TRANSFORMER, POOLING, NORMALIZE)]:
            raise EncoderError(
                f"{folder}/modules.json: module {other[0]} is not supported (Transformer, Pooling, Normalize)"
            )
        if kinds.index(POOLING) != 1 or (NORMALIZE in kinds and kinds.index(NORMALIZE) != 2) or len(kinds) > 3:
            raise EncoderError(
                f"{folder}/modules.json: expected Transformer, Pooling[, Normalize] in this order: {kinds}"
            )
        if next(m for m in modules if m["type"] == TRANSFORMER).get("path", "") not in ("", "."):
            raise EncoderError(f"{folder}/modules.json: the Transformer module must sit at the folder's root")
        config = load("config.json")
        if config.get("model_type") not in MODEL_TYPES:
            raise EncoderError(
                f"{folder}/config.json: model_type {config.get('model_type')!r} is not supported (BERT family: "
                f"{', '.join(MODEL_TYPES)})"
            )
        if config.get("auto_map"):
            raise EncoderError(f"{folder}/config.json: auto_map names custom model code, which is never run here")
        if not (folder / "model.safetensors").is_file():
            bin_note = (
                " (pytorch_model.bin is a pickle: convert it to safetensors)"
                if (folder / "pytorch_model.bin").is_file()
                else ""
            )
            raise EncoderError(f"{folder}: model.safetensors is missing{bin_note}")
        if not (folder / "tokenizer.json").is_file():
            raise EncoderError(f"{folder}: tokenizer.json is missing (save the tokenizer with a fast tokenizer)")
        st = load("sentence_bert_config.json")
        pooling_dir = next(m for m in modules if m["type"] == POOLING).get("path", "1_Pooling")
        pool = load(f"{pooling_dir}/config.json")
        modes = [mode for key, mode in POOLING_MODES.items() if pool.get(key)]
        if "pooling_mode" in pool:  # sentence-transformers 6: one string
            named = {"mean": "mean", "cls": "cls"}.get(str(pool["pooling_mode"]))
            if named is None:
                raise EncoderError(
                    f"{folder}/{pooling_dir}/config.json: pooling_mode {pool['pooling_mode']!r} is not supported (mean or cls)"
                )
            modes = [named]
        if bad := [k for k in UNSUPPORTED_POOLING if pool.get(k)]:
            raise EncoderError(f"{folder}/{pooling_dir}/config.json: {bad[0]} is not supported (mean or CLS pooling)")
        if len(modes) != 1:
            raise EncoderError(
                f"{folder}/{pooling_dir}/config.json: exactly one of mean or CLS pooling must be on, got {modes or 'none'}"
            )
        dim = int(config["hidden_size"])
        if int(pool.get("word_embedding_dimension", pool.get("embedding_dimension", dim))) != dim:
            raise EncoderError(
                f"{folder}/{pooling_dir}/config.json: word_embedding_dimension differs from hidden_size {dim}"
            )
        # SentenceTransformer's truncation: sentence_bert_config.json's max_seq_length (up to version 5), else the
        # tokenizer's model_max_length (6), at most max_position_embeddings
        positions = int(config.get("max_position_embeddings", 512))
        tok_cfg = (
            json.loads((folder / "tokenizer_config.json").read_text())
            if (folder / "tokenizer_config.json").is_file()
            else {}
        )
        max_tokens = int(st.get("max_seq_length") or min(int(tok_cfg.get("model_max_length") or positions), positions))
        if max_tokens > positions:
            raise EncoderError(f"{folder}: max_seq_length {max_tokens} exceeds max_position_embeddings {positions}")
        return cls(
            pooling=modes[0],
            normalize=NORMALIZE in kinds,
            dim=dim,
            heads=int(config["num_attention_heads"]),
            layers=int(config["num_hidden_layers"]),
            vocab_size=int(config["vocab_size"]),
            max_tokens=max_tokens,
        )


class TextEncoder(nn.Module):
    def __init__(self, bert: nn.Module, pooling: str = "mean", normalize: bool = True):
        super().__init__()
        self.bert = bert
        self.pooling, self.normalize = pooling, normalize

    @classmethod
    def from_folder(cls, folder: Path) -> TextEncoder:
        """Weights from a sentence-transformers folder (models.real_data.encoder_dir); no hub, no custom code."""
        from transformers import BertModel
        from transformers.utils import logging as hf_logging

        cfg = EncoderConfig.read(folder)
        hf_logging.set_verbosity_error()  # its load report lists the unused pooler weights: expected here
        hf_logging.disable_progress_bar()
        # eager attention: plain MatMul / Softmax in the graph (what INT8 Q/DQ and TensorRT expect)
        bert = BertModel.from_pretrained(
            str(folder),
            attn_implementation="eager",
            add_pooling_layer=False,
            local_files_only=True,
            use_safetensors=True,
        )
        return cls(bert.float().eval(), cfg.pooling, cfg.normalize).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        count = mask.sum(dim=1)  # (B, 1)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            pooled = (hidden * mask).sum(dim=1) / count.clamp(min=1e-9)  # (B, D)
        if self.normalize:
            pooled = pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-12)
        return torch.where(count > 0, pooled, float("nan"))
