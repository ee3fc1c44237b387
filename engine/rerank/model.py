"""Cross-attention fusion reranker (ALBEF / BLIP image-text-matching style), a pure torch module.

Text token states (the text tower's final layer: MiniLM's 384 wide, MPNet's 768) are the queries; image
patch tokens are the keys and values:

    Attention(Q_t, K_v, V_v) = softmax(Q_t K_v^T / sqrt(d_k)) V_v

Each layer (pre-LayerNorm, residual) is: text self-attention -> cross-attention to the patches ->
feed-forward. A matching head on the masked mean of the final text tokens gives one logit per pair:
sigmoid(logit) = P(the text describes the image). No I/O here; weights come from engine/rerank/lite.py.
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
        self.text_in = nn.Sequential(nn.Linear(text_dim, dim), nn.LayerNorm(dim))  # text_dim -> d
        self.patch_in = nn.Sequential(nn.Linear(patch_dim, dim), nn.LayerNorm(dim))  # Cp -> d
        self.patch_pos = nn.Parameter(torch.zeros(patches, dim))  # learned, one per patch (7x7 or 9x9)
        nn.init.normal_(self.patch_pos, std=0.02)
        self.layers = nn.ModuleList(FusionLayer(dim, heads, ffn, dropout) for _ in range(layers))
        self.ln_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)  # matching head

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, patches: torch.Tensor,
                patch_mask: torch.Tensor | None = None, return_attention: bool = False):
        """text (B, T, text_dim) token states; text_mask (B, T) 0/1; patches (B, P, Cp); patch_mask (B, P) 0/1.
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


class CrossAttentionMatcher(nn.Module):
    """Word-to-region matching through cross-attention (SCAN's text-to-image attention, Lee et al. 2018): the
    default reranker. Each text token attends over the patches and the pair's score is how well every word
    finds what it describes:

        w = unit(W_t text)      (B, T, d)   queries
        v = unit(W_v patches + pos)  (B, P, d)   keys and values (pos: a learned position embedding per patch)
        A = softmax(lambda * w v^T)  = softmax(Q_t K_v^T / sqrt(d)) V_v with Q_t = lambda sqrt(d) w, K_v = V_v = v
        a_t = A_t v             the region each word attends to
        score = masked mean over words of cos(w_t, a_t), in [-1, 1]

    with `both`, plus the mirror term (each patch attends over the words, mean cosine over the patches).
    A single learned temperature lambda; no matching head, so the score is a similarity and is trained
    contrastively (engine.training.rerank). `pairwise` scores every text against every image of a batch from
    one (T x P) similarity tensor, without materialising the attended vectors.
    """

    def __init__(self, text_dim: int = 384, patch_dim: int = 128, dim: int = 256, both: bool = False,
                 temperature: float = 10.0, patches: int = 49):
        super().__init__()
        self.text_in = nn.Linear(text_dim, dim)  # text_dim -> d
        self.patch_in = nn.Linear(patch_dim, dim)  # Cp -> d
        self.patch_pos = nn.Parameter(torch.zeros(patches, dim))  # where a patch is; zero: position-blind start
        self.log_lambda = nn.Parameter(torch.tensor(math.log(temperature)))  # attention sharpness
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # contrastive logit scale (training only)
        self.both = bool(both)

    def _features(self, text: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = nn.functional.normalize(self.text_in(text), dim=-1)  # (B, T, d)
        v = nn.functional.normalize(self.patch_in(patches) + self.patch_pos[: patches.shape[1]], dim=-1)  # (C, P, d)
        return w, v

    def _score(self, sim: torch.Tensor, w: torch.Tensor, v: torch.Tensor, text_mask: torch.Tensor,
               patch_mask: torch.Tensor | None, pairwise: bool):
        """sim (..., T, P) word-patch cosines -> (scores (...), attention (..., T, P))."""
        # shapes: pairwise: sim (B, C, T, P), w (B, T, d), v (C, P, d); elementwise: sim (B, T, P), w, v per row
        lam = self.log_lambda.exp()
        tm = text_mask.bool()[:, None, :] if pairwise else text_mask.bool()  # (B, 1, T) or (B, T)
        logits = lam * sim
        if patch_mask is not None:
            pm = patch_mask.bool()[None, :, None, :] if pairwise else patch_mask.bool()[:, None, :]
            logits = logits.masked_fill(~pm, float("-inf"))
        attn = logits.softmax(-1)  # over patches
        num = (attn * sim).sum(-1)  # (..., T): w_t . a_t
        gram = v @ v.transpose(-1, -2)  # (C, P, P) or (B, P, P)
        eq = "bctp,cpq->bctq" if pairwise else "btp,bpq->btq"
        norm2 = (torch.einsum(eq, attn, gram) * attn).sum(-1)  # (..., T): |a_t|^2
        cos = num / (norm2 + 1e-6).sqrt()
        m = tm.to(cos.dtype)
        score = (cos * m).sum(-1) / m.sum(-1).clamp(min=1.0)
        if self.both:  # patches attend over the words
            back = (lam * sim).masked_fill(~tm[..., None], float("-inf")).softmax(-2)  # (..., T, P) over T
            num2 = (back * sim).sum(-2)  # (..., P)
            gw = w @ w.transpose(-1, -2)  # (B, T, T)
            eq2 = "bctp,btu->bcup" if pairwise else "btp,btu->bup"
            n22 = (torch.einsum(eq2, back, gw) * back).sum(-2)
            cos2 = num2 / (n22 + 1e-6).sqrt()
            if patch_mask is not None:
                pm2 = (patch_mask[None] if pairwise else patch_mask).to(cos2.dtype)
                score = score + (cos2 * pm2).sum(-1) / pm2.sum(-1).clamp(min=1.0)
            else:
                score = score + cos2.mean(-1)
        return score, attn

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, patches: torch.Tensor,
                patch_mask: torch.Tensor | None = None, return_attention: bool = False):
        """Row-wise pairs: text (B, T, text_dim), text_mask (B, T), patches (B, P, Cp), patch_mask (B, P) ->
        scores (B,); with return_attention also [(B, 1, T, P)] (one layer, one head, rows sum to 1)."""
        w, v = self._features(text, patches)
        sim = w @ v.transpose(1, 2)  # (B, T, P) cosines
        score, attn = self._score(sim, w, v, text_mask, patch_mask, pairwise=False)
        return (score, [attn[:, None]]) if return_attention else score

    def pairwise(self, text: torch.Tensor, text_mask: torch.Tensor, patches: torch.Tensor,
                 patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Every text against every image: text (B, T, text_dim), patches (C, P, Cp) -> scores (B, C)."""
        w, v = self._features(text, patches)
        sim = torch.einsum("btd,cpd->bctp", w, v)  # (B, C, T, P)
        return self._score(sim, w, v, text_mask, patch_mask, pairwise=True)[0]
