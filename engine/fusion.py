"""Cross-attention fusion reranker (ALBEF / BLIP image-text-matching style), a pure torch module.

Text token states (MiniLM's final layer) are the queries; image patch tokens are the keys and values:

    Attention(Q_t, K_v, V_v) = softmax(Q_t K_v^T / sqrt(d_k)) V_v

Each layer (pre-LayerNorm, residual) is: text self-attention -> cross-attention to the patches ->
feed-forward. A matching head on the masked mean of the final text tokens gives one logit per pair:
sigmoid(logit) = P(the text describes the image). No I/O here; weights come from engine.rerank.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class Attention(nn.Module):
    """Multi-head attention written out so its weights can be returned for explanation."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        assert dim % heads == 0, "dim must be divisible by heads"
        self.heads, self.d_k = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d) queries; kv (B, S, d) keys/values; kv_mask (B, S) 1 = attend.
        -> (B, T, d) output, (B, h, T, S) attention weights."""
        b, t, _ = x.shape
        s = kv.shape[1]
        q = self.q(x).view(b, t, self.heads, self.d_k).transpose(1, 2)  # (B, h, T, d_k)
        k = self.k(kv).view(b, s, self.heads, self.d_k).transpose(1, 2)  # (B, h, S, d_k)
        v = self.v(kv).view(b, s, self.heads, self.d_k).transpose(1, 2)  # (B, h, S, d_k)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_k)  # (B, h, T, S)
        if kv_mask is not None:
            scores = scores.masked_fill(~kv_mask.bool()[:, None, None, :], float("-inf"))
        weights = scores.softmax(dim=-1)  # (B, h, T, S), rows sum to 1 over S
        out = (self.drop(weights) @ v).transpose(1, 2).reshape(b, t, -1)  # (B, T, d)
        return self.o(out), weights


class FusionLayer(nn.Module):
    """Text self-attention, cross-attention from text to patches, feed-forward; pre-LN residuals."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.0):
        super().__init__()
        self.ln_self, self.ln_cross, self.ln_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, dropout)
        self.cross_attn = Attention(dim, heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, t: torch.Tensor, t_mask: torch.Tensor, v: torch.Tensor, v_mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """t (B, T, d) text, t_mask (B, T); v (B, P, d) patches, v_mask (B, P) or None.
        -> (B, T, d) text, (B, h, T, P) cross-attention weights."""
        h = self.ln_self(t)
        a, _ = self.self_attn(h, h, t_mask)  # (B, T, d)
        t = t + self.drop(a)
        a, w = self.cross_attn(self.ln_cross(t), v, v_mask)  # queries: text; keys/values: patches
        t = t + self.drop(a)
        return t + self.drop(self.ffn(self.ln_ffn(t))), w


class FusionReranker(nn.Module):
    """(text states, mask, patch tokens) -> (B,) image-text matching logits."""

    def __init__(self, text_dim: int = 384, patch_dim: int = 128, dim: int = 256, layers: int = 2,
                 heads: int = 4, ffn: int = 1024, dropout: float = 0.1, patches: int = 49):
        super().__init__()
        self.text_in = nn.Sequential(nn.Linear(text_dim, dim), nn.LayerNorm(dim))  # 384 -> d
        self.patch_in = nn.Sequential(nn.Linear(patch_dim, dim), nn.LayerNorm(dim))  # Cp -> d
        self.patch_pos = nn.Parameter(torch.zeros(patches, dim))  # learned 7x7 position embedding
        nn.init.normal_(self.patch_pos, std=0.02)
        self.layers = nn.ModuleList(FusionLayer(dim, heads, ffn, dropout) for _ in range(layers))
        self.ln_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)  # matching head

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, patches: torch.Tensor,
                patch_mask: torch.Tensor | None = None, return_attention: bool = False):
        """text (B, T, 384) token states; text_mask (B, T) 0/1; patches (B, P, Cp); patch_mask (B, P) 0/1.
        -> logits (B,); with return_attention also a list (one per layer) of (B, h, T, P) cross weights."""
        t = self.text_in(text)  # (B, T, d)
        v = self.patch_in(patches) + self.patch_pos[: patches.shape[1]]  # (B, P, d)
        attn = []
        for layer in self.layers:
            t, w = layer(t, text_mask, v, patch_mask)
            attn.append(w)
        m = text_mask.unsqueeze(-1).to(t.dtype)  # (B, T, 1)
        pooled = (self.ln_out(t) * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, d) masked mean
        logits = self.head(pooled).squeeze(-1)  # (B,)
        return (logits, attn) if return_attention else logits
