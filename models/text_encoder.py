"""The sentence encoder: all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide) + mean pooling + L2 normalisation.

forward(input_ids (B, T) int64, attention_mask (B, T) int64) -> embedding (B, 384) float32, what
`SentenceTransformer("all-MiniLM-L6-v2").encode(texts)` returns for the same tokens. A row with no attended
token (an all-zero mask) answers NaN: there is nothing to average (clients.validate names it).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class TextEncoder(nn.Module):
    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    @classmethod
    def from_folder(cls, folder: Path) -> TextEncoder:
        """Weights from an extracted sentence-transformers folder (models.real_data.encoder_dir); no hub."""
        from transformers import BertModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # its load report lists the unused pooler weights: expected here
        hf_logging.disable_progress_bar()
        # eager attention: plain MatMul / Softmax in the graph (what INT8 Q/DQ and TensorRT expect)
        bert = BertModel.from_pretrained(
            str(folder), attn_implementation="eager", add_pooling_layer=False, local_files_only=True
        )
        return cls(bert.float().eval()).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        count = mask.sum(dim=1)  # (B, 1)
        mean = (hidden * mask).sum(dim=1) / count.clamp(min=1e-9)  # (B, D)
        emb = mean / mean.norm(dim=1, keepdim=True).clamp(min=1e-12)
        return torch.where(count > 0, emb, float("nan"))
