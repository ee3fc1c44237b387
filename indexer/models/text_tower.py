"""Sentence-transformers style text tower over a BERT encoder (all-MiniLM-L6-v2): token states, then
mean pooling over the attention mask. The BERT encoder (indexer.models.bert) is built and loaded by the
factory."""
from __future__ import annotations

import torch
from torch import nn


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, C) token states, (B, T) 0/1 mask -> (B, C) mean over real tokens (sentence-transformers)."""
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)


class TextTower(nn.Module):
    """(B, T) token ids and 0/1 mask -> (B, T, C) final token states."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert
        self.width = bert.config.hidden_size

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bert(ids, mask)  # (B, T, C)
