"""A training trial: partly unlocking the image tower, its last layer (the 1x1 head convolution and its batch
norm's affine weights, trunk_width -> 1280 channels), for the pooled embedding only.

The trunk map is cached (engine.training.features), so each step runs the head convolution on the batch's
trunk maps instead of reading precomputed patch maps. The tuned head starts as the ImageNet one and is pulled
back toward it by an L2-SP penalty (Li et al. 2018, "Explicit inductive bias for transfer learning"):
`sp * sum((w - w0)^2)`. Its batch norm keeps ImageNet's running statistics (eval mode). The reranker's patch
tokens would still come from the locked head, so shipping it would mean a second head convolution at index
time (about 4% of Lite2's multiply-adds at 260 px); heads trained with it are refused by the encoder
(`TRIAL_OPTIONS`) until then.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F


class TunedHead(torch.nn.Module):
    """(B, trunk_width, h, w) trunk maps -> (B, 1280, h, w): relu6(bn(conv1x1(x))), a trainable copy of a
    tower's head (conv weight, bn weight and bias; running statistics fixed)."""

    def __init__(self, tower: torch.nn.Module):
        super().__init__()
        self.conv = copy.deepcopy(tower._conv_head)
        self.bn = copy.deepcopy(tower._bn1)
        for i, p in enumerate(self.trainable()):  # w0 of the L2-SP penalty (moves with the module, not saved)
            self.register_buffer(f"reference{i}", p.detach().clone(), persistent=False)

    def trainable(self) -> list[torch.nn.Parameter]:
        return [self.conv.weight, self.bn.weight, self.bn.bias]

    def train(self, mode: bool = True) -> "TunedHead":
        super().train(mode)
        self.bn.eval()  # ImageNet's running statistics stay
        return self

    def forward(self, trunk: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.bn(self.conv(trunk)))

    def sp_penalty(self) -> torch.Tensor:
        """sum ||w - w0||^2 over the trainable weights."""
        return sum(((p - getattr(self, f"reference{i}")) ** 2).sum() for i, p in enumerate(self.trainable()))


def tuned_maps(head: TunedHead, trunk: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """The cached (N, trunk_width, h, w) trunk's `rows` -> (B, 1280, h, w) float32 maps through the tuned head
    (with gradients)."""
    return head(torch.from_numpy(np.asarray(trunk[rows], np.float32)))


@torch.no_grad()
def tuned_pooled(head: TunedHead, trunk, batch: int = 250) -> torch.Tensor:
    """Every row's whole-map mean of the tuned head's map -> (N, 1280), for dev evaluation."""
    was = head.training
    head.eval()
    out = torch.cat([head(torch.from_numpy(np.asarray(trunk[s:s + batch], np.float32))).mean((2, 3))
                     for s in range(0, len(trunk), batch)])
    head.train(was)
    return out
