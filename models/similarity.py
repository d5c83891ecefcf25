"""Cosine top-k over an L2-normalised catalog, and the user-embedding table lookup."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import spec


class Similarity(nn.Module):
    """forward(query (B, D) float32) -> (scores (B, k) float32, ids (B, k) int64), best first.

    `item_ids` (n_items,): the catalog's own ids (a user's catalog), answered instead of row numbers."""

    def __init__(self, catalog: np.ndarray | torch.Tensor, k: int = spec.TOP_K, item_ids: np.ndarray | None = None):
        super().__init__()
        catalog = torch.as_tensor(np.asarray(catalog, dtype=np.float32))
        if k > catalog.shape[0]:
            raise ValueError(f"k={k} is larger than the catalog ({catalog.shape[0]} items)")
        self.k = k
        # Stored (D, n_items): a plain MatMul with a constant right operand in ONNX (per-column INT8 scales).
        self.register_buffer("catalog_t", catalog.T.contiguous())
        if item_ids is not None:
            self.register_buffer("item_ids", torch.as_tensor(np.asarray(item_ids, dtype=np.int64)))
        else:
            self.item_ids = None

    def forward(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = F.normalize(query, dim=1, eps=1e-12)  # (B, D)
        scores = q @ self.catalog_t  # (B, n_items) cosine similarities
        top, ids = torch.topk(scores, self.k, dim=1, largest=True, sorted=True)
        if self.item_ids is not None:
            ids = self.item_ids[ids]  # (B, k) the catalog's own ids
        return top, ids


class UserEmbedding(nn.Module):
    """forward(user_id (B, 1) int64) -> embedding (B, D) float32: rows of the user table.

    `user_ids` (n_users,): the users' own ids (a user's table); a dense lookup maps an id to its row, and an id
    without a row (inside [0, max id]) answers NaN, the guard's sentinel (ids outside are the guard's)."""

    def __init__(self, table: np.ndarray | torch.Tensor, user_ids: np.ndarray | None = None, lookup_size: int = 0):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(np.asarray(table, dtype=np.float32)))
        if user_ids is not None or lookup_size:
            size = int(np.max(user_ids)) + 1 if user_ids is not None else lookup_size
            lookup = torch.full((size,), -1, dtype=torch.int64)
            if user_ids is not None:
                lookup[torch.as_tensor(np.asarray(user_ids, np.int64))] = torch.arange(len(user_ids))
            self.register_buffer("lookup", lookup)
        else:
            self.lookup = None

    @property
    def n_users(self) -> int:
        """Ids answer in [0, n_users): export.onnx_export's guard range."""
        return int(self.lookup.shape[0] if self.lookup is not None else self.table.shape[0])

    def forward(self, user_id: torch.Tensor) -> torch.Tensor:
        ids = user_id.reshape(-1)
        if self.lookup is None:
            return self.table.index_select(0, ids)
        row = self.lookup.index_select(0, ids)  # (B,) -1 where the id has no user
        found = (row >= 0).unsqueeze(1)  # (B, 1)
        emb = self.table.index_select(0, torch.clamp(row, min=0))
        return torch.where(found, emb, float("nan"))
