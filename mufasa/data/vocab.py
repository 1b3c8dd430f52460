"""Item id <-> dense index mapping shared by every model.

Index 0 is padding; item ``items.parquet`` row r has index r + 1, so feature/fused matrices (whose rows follow
``items.parquet``) line up with model embeddings after prepending one padding row.
"""

from __future__ import annotations

import numpy as np

PAD = 0


class ItemVocab:
    def __init__(self, item_ids: np.ndarray):
        ids = np.asarray(item_ids, dtype=np.int64)
        if len(np.unique(ids)) != len(ids):
            raise ValueError("item ids must be unique")
        self.item_ids = ids
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def to_index(self, ids: np.ndarray) -> np.ndarray:
        """Item ids -> indices 1..N; raises KeyError naming unknown ids."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self._sorted, ids)
        pos = np.clip(pos, 0, len(self._sorted) - 1)
        found = self._sorted[pos] == ids if len(self._sorted) else np.zeros(ids.shape, bool)
        if not found.all():
            raise KeyError(f"unknown item ids: {np.unique(ids[~found])[:10].tolist()}")
        return self._order[pos] + 1

    def to_ids(self, index: np.ndarray) -> np.ndarray:
        """Indices 1..N -> item ids."""
        index = np.asarray(index, dtype=np.int64)
        if ((index < 1) | (index > len(self.item_ids))).any():
            raise IndexError("index out of range (0 is padding)")
        return self.item_ids[index - 1]
