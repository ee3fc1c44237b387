"""A BERT encoder in plain torch (post-LayerNorm, absolute positions, GELU), enough for all-MiniLM-L6-v2.

The submodule names are those of `transformers.BertModel` without its pooler, so that model's checkpoints
load with ``strict=True`` and give the same token states (tests/test_minilm.py compares them); a search
process then never imports `transformers` (about 140 MB resident and seconds of start-up).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    hidden_act: str = "gelu"
    position_embedding_type: str = "absolute"

    @classmethod
    def from_dict(cls, config: dict) -> "BertConfig":
        """The fields of a `config.json` this module knows; the rest (model_type, architectures...) ignored.
        Raises ValueError for a variant it does not implement."""
        cfg = cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})
        if cfg.hidden_act != "gelu" or cfg.position_embedding_type != "absolute":
            raise ValueError(f"unsupported BERT variant: hidden_act={cfg.hidden_act!r}, "
                             f"position_embedding_type={cfg.position_embedding_type!r} (need 'gelu', 'absolute')")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(f"hidden_size {cfg.hidden_size} is not a multiple of {cfg.num_attention_heads} heads")
        return cfg


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, ids: torch.Tensor, token_types: torch.Tensor) -> torch.Tensor:
        # ids, token_types: (B, T) -> (B, T, C)
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.token_type_embeddings(token_types) + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.p_drop = cfg.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # x: (B, T, C); bias: (B, 1, 1, T) additive, 0 for real tokens and -inf-like for padding, or None
        B, T, C = x.shape
        q, k, v = (proj(x).view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, H, T, C/H)
                   for proj in (self.query, self.key, self.value))
        # softmax(q k^T / sqrt(C/H) + bias) v
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.p_drop if self.training else 0.0)
        return out.transpose(1, 2).reshape(B, T, C)


class AddNorm(nn.Module):
    """dense -> dropout -> LayerNorm(residual + .): BERT's `SelfOutput` and `Output`."""

    def __init__(self, d_in: int, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(d_in, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class Attention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = AddNorm(cfg.hidden_size, cfg)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, bias), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, BERT's "gelu"


class Layer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = AddNorm(cfg.intermediate_size, cfg)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, bias)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, bias)
        return x


class Bert(nn.Module):
    """(B, T) token ids, (B, T) 0/1 attention mask[, (B, T) token types] -> (B, T, C) final token states."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        bias = None  # no padding (one query, say): no mask, SDPA's fastest path
        if not bool(attention_mask.all()):
            # padding keys get the most negative finite value (as transformers does), so no row is all -inf
            bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min  # (B, 1, 1, T)
        return self.encoder(x, bias)
