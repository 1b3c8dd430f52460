"""Item features: the frozen modality inputs of the fusion layer, one row per item, as one small object.

The ``features`` stage writes them (``data/features/{text,image,side}.npy`` + ``index.parquet``'s ``has_image``);
MFL training, the benchmark and the tuner read them back (:func:`mufasa.pipeline.inputs.read_features`). Arrays are
numpy on disk and torch tensors on a device (:meth:`ItemFeatures.to`); either way :meth:`take` selects rows of
every modality at once, so code never repeats ``None if x is None else x[rows]`` per modality.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

__all__ = ["ItemFeatures"]


@dataclass(frozen=True)
class ItemFeatures:
    """Rows follow ``data/raw/items.parquet``. A modality that is absent (or unused) is ``None``."""

    text: Any  # (N, text_dim) float: title embeddings (every item has a title)
    image: Any = None  # (N, image_dim) float: image features; zero rows where image_mask is False
    image_mask: Any = None  # (N,) bool: the item has an image (the fusion layer masks the rest out)
    side: Any = None  # (N, side_dim) float: genres | year | knowledge-graph entities

    def __post_init__(self) -> None:
        if (self.image is None) != (self.image_mask is None):
            raise ValueError("image and image_mask come together (both given or both None)")
        n = len(self.text)
        wrong = {f.name: tuple(np.shape(v)) for f in fields(self) if (v := getattr(self, f.name)) is not None
                 and (np.ndim(v) == 0 or np.shape(v)[0] != n)}
        if wrong:
            raise ValueError(f"item features disagree on the number of items: text has {n} rows, {wrong}")

    def __len__(self) -> int:
        return len(self.text)

    def take(self, rows) -> ItemFeatures:
        """The same modalities, rows ``rows`` only (an index array/tensor or a slice)."""
        return ItemFeatures(*(None if v is None else v[rows] for v in self.arrays()))

    def to(self, device) -> ItemFeatures:
        """Torch tensors on ``device``: float32 features, a bool image mask."""
        import torch

        def tensor(x, dtype):
            return None if x is None else torch.as_tensor(x, dtype=dtype, device=device)

        return ItemFeatures(tensor(self.text, torch.float32), tensor(self.image, torch.float32),
                            tensor(self.image_mask, torch.bool), tensor(self.side, torch.float32))

    def only(self, tokens: Iterable[str]) -> ItemFeatures:
        """Keep the modalities the fusion layer uses (``FusionConfig.tokens``); the title always stays."""
        tokens = set(tokens)
        return replace(
            self,
            image=self.image if "image" in tokens else None,
            image_mask=self.image_mask if "image" in tokens else None,
            side=self.side if "side" in tokens else None,
        )

    def arrays(self) -> tuple[Any, Any, Any, Any]:
        """``(text, image, image_mask, side)``: the fusion layer's positional inputs."""
        return self.text, self.image, self.image_mask, self.side
