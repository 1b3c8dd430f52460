"""MFL, the multimodal fusion layer: per-modality projection heads, then title-anchored attention -> fused item.

MUFASA (multimodal fusion + sparse user-sequence attention) describes the fusion layer by intent only: project
each modality into a shared space, fuse with the *title* as the anchor, and align the result with collaborative
signal. The concrete architecture below is ours:

1. ``ModalityHead`` per modality (LayerNorm -> Linear -> GELU -> Dropout -> Linear) maps the frozen encoder
   outputs (MiniLM title 384-d, EfficientNet-Lite0 image 1280-d, side information S-d) into ``d_model``.
2. ``TitleAnchoredAttention``: the projected title is the single query; the keys/values are the modality tokens
   ``[title, image, side]`` (plus a learned type embedding each). Items without an image get a learned
   ``missing_image`` token instead of the image head's output. The head is evaluated only on rows that have an
   image, so for an image-less item the image-head weights (and whatever sits in its zero image row) have no
   influence at all, forward or backward.
3. A sigmoid gate decides, per dimension, how much of the attended context joins the title anchor
   (``h = title + g * context``), then a pre-norm MLP block and the output head map to ``out_dim`` and the
   fused vector is L2-normalised (cosine geometry, as SAL and the contrastive losses use it).

NOTE: the collaborative item vector is *not* an input: it is a training target
(``mufasa.models.mfl_losses.collaborative_alignment_loss``), so cold items without interactions are fused
exactly like warm ones. ``project_collab`` maps target vectors into the fused space with an orthogonally
parametrised linear map (rotation only: it cannot distort the collaborative neighbourhoods it transfers).

The attention has one query and at most three keys, so it is written out (softmax of a (B, H, 1, M) score
tensor) rather than routed through SDPA: the weights are returned for diagnostics, and at M <= 3 a fused kernel
would buy nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

__all__ = ["MODALITIES", "FusionConfig", "FusionOutput", "ModalityHead", "MultimodalFusion", "TitleAnchoredAttention"]

# Token order inside the attention; the title is always first (it is also the query).
MODALITIES: tuple[str, ...] = ("text", "image", "side")


@dataclass(frozen=True)
class FusionConfig:
    """Shapes and switches of :class:`MultimodalFusion`."""

    # Width of the side-information row (genre multi-hot | year | KG entities): the catalogue decides it
    # (``meta.json`` dims.side), so there is no sensible default.
    side_dim: int
    # all-MiniLM-L6-v2 sentence embeddings (features stage, text.npy).
    text_dim: int = 384
    # EfficientNet-Lite0 pooled features (features stage, image.npy).
    image_dim: int = 1280
    # Shared space where modality tokens are aligned to the title: 128 = 4 heads x 32, roomy for <= 3 tokens.
    d_model: int = 128
    # Fused item vector = SAL's item embedding width; 64 matches the collaborative space and SAL's model dim.
    out_dim: int = 64
    # Width of the collaborative target vectors (``collaborative_space`` dim); 0: no collaborative head.
    collab_dim: int = 64
    # 4 heads of 32: each head can weigh the image/side tokens differently (e.g. genre vs. year cues).
    n_heads: int = 4
    # 0.1: the catalogue is small (1.7k items for ML-100k) and the heads are wide; regularise lightly.
    dropout: float = 0.1
    # Which modalities become tokens; "text" is the anchor and always required. Drop "image" for catalogues
    # without images (ML-100k) or for the "title only" ablation, "side" for the no-side ablation.
    modalities: tuple[str, ...] = MODALITIES

    def __post_init__(self) -> None:
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; choose from {MODALITIES}")
        if "text" not in self.modalities:
            raise ValueError("modalities must include 'text': the title is the fusion anchor")
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities has duplicates: {self.modalities}")
        for name in ("text_dim", "image_dim", "d_model", "out_dim", "n_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.side_dim < 0 or self.collab_dim < 0:
            raise ValueError("side_dim and collab_dim must be >= 0")
        if "side" in self.modalities and self.side_dim == 0:
            raise ValueError("side_dim is 0 but 'side' is in modalities: drop it from modalities")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def tokens(self) -> tuple[str, ...]:
        """Modalities in attention order (title first)."""
        return tuple(m for m in MODALITIES if m in self.modalities)


@dataclass
class FusionOutput:
    fused: torch.Tensor  # (B, out_dim) unit rows: the item vector SAL consumes
    tokens: dict[str, torch.Tensor]  # modality -> (B, d_model) head output in the shared space (losses use these)
    masks: dict[str, torch.Tensor]  # modality -> (B,) bool: which tokens are real (image: has_image)
    attention: torch.Tensor  # (B, n_heads, M) softmax weights of the title query over the M tokens
    order: tuple[str, ...]  # modality of each of the M attention slots


class ModalityHead(nn.Module):
    """LayerNorm -> Linear -> GELU -> Dropout -> Linear: one frozen-encoder output into the shared space.

    The input LayerNorm puts encoders with very different scales (unit MiniLM rows, EfficientNet activations
    in the tens, 0/1 multi-hots) on an equal footing before the first projection.
    """

    def __init__(self, in_dim: int, d_model: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_model, d_model),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, in_dim) -> (B, d_model)


class TitleAnchoredAttention(nn.Module):
    """Multi-head attention with the title as the only query over the modality tokens."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_kv = nn.LayerNorm(d_model)
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.attn_drop = nn.Dropout(dropout)

    def forward(self, anchor: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """anchor (B, D), tokens (B, M, D) -> context (B, D), weights (B, H, M)."""
        B, M, D = tokens.shape
        H = self.n_heads
        hd = D // H
        q = self.q(self.ln_q(anchor)).view(B, H, 1, hd)  # (B, H, 1, hd)
        k, v = self.kv(self.ln_kv(tokens)).split(D, dim=-1)  # (B, M, D) each
        k = k.view(B, M, H, hd).transpose(1, 2)  # (B, H, M, hd)
        v = v.view(B, M, H, hd).transpose(1, 2)  # (B, H, M, hd)
        weights = ((q @ k.transpose(-2, -1)) * hd**-0.5).softmax(dim=-1)  # (B, H, 1, M)
        ctx = self.attn_drop(weights) @ v  # (B, H, 1, hd)
        ctx = ctx.transpose(1, 2).reshape(B, D)  # (B, 1, H, hd) -> (B, D)
        return self.proj(ctx), weights.squeeze(2)  # (B, D), (B, H, M)


class MultimodalFusion(nn.Module):
    """Frozen-encoder features of a batch of items -> fused unit vectors (see the module docstring)."""

    def __init__(self, config: FusionConfig):
        super().__init__()
        self.config = config
        D = config.d_model
        dims = {"text": config.text_dim, "image": config.image_dim, "side": config.side_dim}
        self.heads = nn.ModuleDict({m: ModalityHead(dims[m], D, config.dropout) for m in config.tokens})
        # One learned type embedding per attention slot, so keys know which modality they came from.
        self.type_embedding = nn.Parameter(torch.randn(len(config.tokens), D) * 0.02)  # (M, D)
        if "image" in config.tokens:
            # Stands in for the image head's output on items without an image.
            self.missing_image = nn.Parameter(torch.randn(D) * 0.02)  # (D,)
        self.attention = TitleAnchoredAttention(D, config.n_heads, config.dropout)
        self.gate = nn.Linear(2 * D, D)
        self.ln_mlp = nn.LayerNorm(D)
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(2 * D, D))
        self.ln_out = nn.LayerNorm(D)
        self.out = nn.Linear(D, config.out_dim)
        if config.collab_dim:
            # Orthogonal (rotation / isometric embedding) parametrisation: the target's cosine geometry survives.
            self.collab_proj = parametrizations.orthogonal(nn.Linear(config.collab_dim, config.out_dim, bias=False))

    def _image_token(self, image: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
        """(B, image_dim), (B,) bool -> (B, D): head output where an image exists, the missing token elsewhere."""
        B = image.shape[0]
        token = self.missing_image.to(image.dtype).expand(B, -1)  # (B, D)
        rows = image_mask.nonzero(as_tuple=True)[0]  # (B_img,)
        if rows.numel() == 0:
            return token
        # Run the head on the rows with images only: image-less rows never touch its weights (not even as 0 * w,
        # which would still propagate a NaN or Inf sitting in a masked-out feature row).
        projected = self.heads["image"](image.index_select(0, rows))  # (B_img, D)
        return token.index_put((rows,), projected.to(token.dtype))  # (B, D), out of place

    def forward(
        self,
        text: torch.Tensor,
        image: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        side: torch.Tensor | None = None,
    ) -> FusionOutput:
        cfg = self.config
        B = text.shape[0]
        if text.shape != (B, cfg.text_dim):
            raise ValueError(f"text must be (B, {cfg.text_dim}), got {tuple(text.shape)}")
        tokens: dict[str, torch.Tensor] = {"text": self.heads["text"](text)}  # (B, D)
        masks: dict[str, torch.Tensor] = {"text": torch.ones(B, dtype=torch.bool, device=text.device)}
        if "image" in cfg.tokens:
            if image is None or image_mask is None:
                raise ValueError("the image modality is on: pass image (B, image_dim) and image_mask (B,)")
            if image.shape != (B, cfg.image_dim) or image_mask.shape != (B,):
                raise ValueError(
                    f"image must be ({B}, {cfg.image_dim}) and image_mask ({B},); "
                    f"got {tuple(image.shape)} and {tuple(image_mask.shape)}"
                )
            mask = image_mask.to(torch.bool)
            tokens["image"] = self._image_token(image, mask)
            masks["image"] = mask
        if "side" in cfg.tokens:
            if side is None or side.shape != (B, cfg.side_dim):
                got = None if side is None else tuple(side.shape)
                raise ValueError(f"the side modality is on: side must be ({B}, {cfg.side_dim}), got {got}")
            tokens["side"] = self.heads["side"](side)
            masks["side"] = torch.ones(B, dtype=torch.bool, device=text.device)

        anchor = tokens["text"]  # (B, D)
        stacked = torch.stack([tokens[m].to(anchor.dtype) for m in cfg.tokens], dim=1)  # (B, M, D)
        stacked = stacked + self.type_embedding.to(stacked.dtype)  # (B, M, D)
        context, weights = self.attention(anchor, stacked)  # (B, D), (B, H, M)
        gate = torch.sigmoid(self.gate(torch.cat([anchor, context], dim=-1)))  # (B, D)
        h = anchor + gate * context  # (B, D): the title stays the backbone, other modalities are gated in
        h = h + self.mlp(self.ln_mlp(h))  # (B, D)
        fused = F.normalize(self.out(self.ln_out(h)).float(), dim=-1)  # (B, out_dim), fp32 unit rows
        return FusionOutput(fused=fused, tokens=tokens, masks=masks, attention=weights, order=cfg.tokens)

    def project_collab(self, collab: torch.Tensor) -> torch.Tensor:
        """(B, collab_dim) collaborative targets -> (B, out_dim) in the fused space (training only)."""
        if not self.config.collab_dim:
            raise RuntimeError("this FusionConfig has collab_dim=0: there is no collaborative head")
        return self.collab_proj(collab)
