"""The "lite" dual encoder: EfficientNet-Lite0 and MiniLM towers, LiT-style trained heads mapping both
into one shared, L2-normalised space.

Trainable parts (everything else locked): the image tower's 1x1 head conv (initialised from ImageNet),
an attention pool over its 7x7 patch tokens and an MLP; the text tower's top BERT layer(s) and a
projection of the mean-pooled tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .efficientnet_lite import EfficientNetLite0
from .text_tower import TextTower, mean_pool


class AttentionPool(nn.Module):
    """A learned query attends over patch tokens; added to their mean (so it starts as average pooling)."""

    def __init__(self, width: int, heads: int = 8):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.zeros(1, 49, width))
        self.norm = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        nn.init.normal_(self.query, std=0.02)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, C)
        mean = tokens.mean(1)
        pos = self.pos if self.pos.shape[1] == tokens.shape[1] else 0.0
        kv = self.norm(tokens + pos)
        q = self.query.expand(tokens.shape[0], -1, -1) + mean.unsqueeze(1)
        out, _ = self.attn(self.norm(q), kv, kv, need_weights=False)  # (B, 1, C)
        return mean + out.squeeze(1)


class ImageHead(nn.Module):
    """(B, 320, h, w) trunk map -> (B, D) embedding (not normalised), plus (B, h*w, 1280) patch tokens."""

    def __init__(self, dim: int, hidden: int = 1024):
        super().__init__()
        base = EfficientNetLite0()
        self._conv_head, self._bn1 = base._conv_head, base._bn1  # same names: init from ImageNet weights
        self.pool = AttentionPool(1280)
        self.mlp = nn.Sequential(nn.LayerNorm(1280), nn.Linear(1280, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def patch_tokens(self, trunk: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn1(self._conv_head(trunk)))  # (B, 1280, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, h*w, 1280)

    def forward(self, trunk: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.pool(self.patch_tokens(trunk)))


class TextHead(nn.Module):
    """(B, C) mean-pooled token states -> (B, D) embedding (not normalised)."""

    def __init__(self, width: int, dim: int, hidden: int = 1024):
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.mlp(pooled)


class LiteDualEncoder(nn.Module):
    """Both towers and heads. Inputs are preprocessed pixels (B, 3, 224, 224) and token ids/mask (B, T)."""

    def __init__(self, text_tower: TextTower, dim: int = 256):
        super().__init__()
        self.image_tower = EfficientNetLite0()
        self.text_tower = text_tower
        self.image_head = ImageHead(dim)
        self.text_head = TextHead(text_tower.width, dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1/0.07), as CLIP
        self.dim = dim

    def encode_image_trunk(self, trunk: torch.Tensor) -> torch.Tensor:  # (B, 320, h, w) -> (B, D) unit norm
        return F.normalize(self.image_head(trunk), dim=-1)

    def encode_text_states(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, C) states entering the trainable top layers -> (B, D) unit norm."""
        top = self.text_tower.forward_top(states, mask)
        return F.normalize(self.text_head(mean_pool(top, mask)), dim=-1)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, D)
        return self.encode_image_trunk(self.image_tower.forward_trunk(pixels))

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, D)
        return self.encode_text_states(self.text_tower.forward_bottom(ids, mask), mask)
