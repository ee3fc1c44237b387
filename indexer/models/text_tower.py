"""Sentence-transformers style text tower over a BERT encoder (all-MiniLM-L6-v2): token states, then
mean pooling over the attention mask. The BertModel instance is built and loaded by the factory."""
from __future__ import annotations

import torch
from torch import nn


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, C) token states, (B, T) 0/1 mask -> (B, C) mean over real tokens (sentence-transformers)."""
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)


def extended_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 0/1 -> (B, 1, 1, T) additive mask for BertLayer: 0 keep, large negative drop."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class TextTower(nn.Module):
    """BERT token encoder split at `split` so the top layers can be fine-tuned on cached states.

    forward(ids, mask)                  -> (B, T, C) final token states
    forward_bottom(ids, mask)           -> (B, T, C) states entering layer `split`
    forward_top(states, mask)           -> (B, T, C) states after the last layer
    """

    def __init__(self, bert: nn.Module, split: int):
        super().__init__()
        self.bert = bert
        self.split = split
        self.width = bert.config.hidden_size

    def forward_bottom(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.bert.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))  # (B, T, C)
        ext = extended_mask(mask, h.dtype)
        for layer in self.bert.encoder.layer[: self.split]:
            h = _layer_out(layer(h, attention_mask=ext))
        return h

    def forward_top(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ext = extended_mask(mask, h.dtype)
        for layer in self.bert.encoder.layer[self.split:]:
            h = _layer_out(layer(h, attention_mask=ext))
        return h

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.forward_top(self.forward_bottom(ids, mask), mask)


def _layer_out(out):
    """BertLayer returns a tensor in recent transformers and a tuple in older ones."""
    return out[0] if isinstance(out, tuple) else out
