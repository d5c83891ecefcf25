"""Cosine top-k over an L2-normalised catalog, and the user-embedding table lookup."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import spec


class Similarity(nn.Module):
    """forward(query (B, D) float32) -> (scores (B, k) float32, ids (B, k) int64), best first."""

    def __init__(self, catalog: np.ndarray | torch.Tensor, k: int = spec.TOP_K):
        super().__init__()
        catalog = torch.as_tensor(np.asarray(catalog, dtype=np.float32))
        if k > catalog.shape[0]:
            raise ValueError(f"k={k} is larger than the catalog ({catalog.shape[0]} items)")
        self.k = k
        # Stored (D, n_items): a plain MatMul with a constant right operand in ONNX (per-column INT8 scales).
        self.register_buffer("catalog_t", catalog.T.contiguous())

    def forward(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = F.normalize(query, dim=1, eps=1e-12)  # (B, D)
        scores = q @ self.catalog_t  # (B, n_items) cosine similarities
        top, ids = torch.topk(scores, self.k, dim=1, largest=True, sorted=True)
        return top, ids


class UserEmbedding(nn.Module):
    """forward(user_id (B, 1) int64) -> embedding (B, D) float32: rows of the user table."""

    def __init__(self, table: np.ndarray | torch.Tensor):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(np.asarray(table, dtype=np.float32)))

    def forward(self, user_id: torch.Tensor) -> torch.Tensor:
        return self.table.index_select(0, user_id.reshape(-1))
