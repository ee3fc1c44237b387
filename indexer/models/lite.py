"""The "lite" dual encoder: EfficientNet-Lite0 and MiniLM towers, locked, with LiT-style trained heads
mapping both into one shared, L2-normalised space.

Image: the tower's 1280-channel head map (7x7 at 224 px), mean-pooled (or generalised-mean pooled, `pool_p`),
standardised with the training set's statistics, then a 2-layer MLP. Text: MiniLM's mean-pooled sentence embedding, then a linear map.
The heads are a small ensemble: `members` independently trained (image MLP, text map) pairs whose
unit vectors are summed and renormalised -- one D-dimensional vector per item, as with a single head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xmodal.indexer.models.efficientnet_lite import EfficientNetLite
from xmodal.indexer.models.text_tower import TextTower, mean_pool


def gem_pool(maps: torch.Tensor, p: float = 1.0) -> torch.Tensor:
    """(B, C, H, W) non-negative maps -> (B, C): the whole map's mean (p = 1) or its generalised mean,
    (mean x^p)^(1/p), which leans toward each channel's strongest patches as p grows."""
    if p == 1:
        return maps.float().mean((2, 3))
    return (maps.float().clamp(min=1e-6) ** p).mean((2, 3)) ** (1 / p)


class ImageHead(nn.Module):
    """(B, C) pooled image features -> (B, D) embedding (not normalised)."""

    def __init__(self, width: int, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        self.mlp = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.mlp((pooled - self.mean) / self.std)


class TextHead(nn.Module):
    """(B, C) mean-pooled token states -> (B, D) embedding (not normalised): linear, or an MLP with `hidden`."""

    def __init__(self, width: int, dim: int, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        if hidden:
            self.proj = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        else:
            self.proj = nn.Linear(width, dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(pooled)


class LiteDualEncoder(nn.Module):
    """Both towers and heads. Inputs: preprocessed pixels (B, 3, S, S) (S = 224 for Lite0); token ids and mask
    (B, T). `image_variant`: the EfficientNet-Lite variant of the image tower (lite0, the lite model's);
    `pool_p`: the patch map's pooling before the image head (1: the mean; 3: GeM, base's)."""

    def __init__(self, text_tower: TextTower, dim: int = 512, hidden: int = 4096, dropout: float = 0.0,
                 members: int = 1, text_hidden: int = 0, text_dropout: float = 0.0, image_variant: str = "lite0",
                 pool_p: float = 1.0):
        super().__init__()
        self.image_tower = EfficientNetLite(image_variant)
        self.text_tower = text_tower
        self.image_heads = nn.ModuleList(ImageHead(EfficientNetLite.width, dim, hidden, dropout)
                                         for _ in range(members))
        self.text_heads = nn.ModuleList(TextHead(text_tower.width, dim, text_hidden, text_dropout)
                                        for _ in range(members))
        self.logit_scale = nn.Parameter(torch.full((members,), 2.659))  # log(1/0.07), as CLIP
        self.dim = dim
        self.pool_p = float(pool_p)

    def image_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1280, H/32, W/32) patch features of the locked tower."""
        return self.image_tower.forward_features(pixels)

    def pool_image(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, 1280, H, W) patch maps -> (B, 1280) pooled features, as the image heads were trained on."""
        return gem_pool(maps, self.pool_p)

    def embed_pooled_image(self, pooled: torch.Tensor, member: int | None = None) -> torch.Tensor:
        """(B, 1280) -> (B, D) unit norm; one member's embedding, or the ensemble's when member is None."""
        return _ensemble(self.image_heads, pooled, member)

    def embed_pooled_text(self, pooled: torch.Tensor, member: int | None = None) -> torch.Tensor:
        """(B, 384) -> (B, D) unit norm."""
        return _ensemble(self.text_heads, pooled, member)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, D)
        return self.embed_pooled_image(self.pool_image(self.image_patches(pixels)))

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, D)
        return self.embed_pooled_text(mean_pool(self.text_tower(ids, mask), mask))


def _ensemble(heads: nn.ModuleList, x: torch.Tensor, member: int | None) -> torch.Tensor:
    if member is not None:
        return F.normalize(heads[member](x), dim=-1)
    return F.normalize(sum(F.normalize(h(x), dim=-1) for h in heads), dim=-1)
