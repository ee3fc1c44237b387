"""Confirming a candidate pair from the pixels, pure: a 64-bit DCT perceptual hash and a pixel correlation
on a small thumbnail, both cheap and computed only for photos in candidate pairs.

* pHash: grey 32 x 32, 2-D DCT, the 8 x 8 lowest frequencies against their median -> 64 bits. Resizing,
  JPEG re-encoding, brightening and colour shifts barely move it; a different photo differs in ~32 bits.
* pixel correlation: RGB 16 x 16, each channel standardised (so brightness and colour shifts cancel), then
  the correlation of the two thumbnails. Two frames of a burst (the same scene moved by a third of the frame)
  correlate far less than a slightly cropped copy.

`pair_score` = min(1 - hamming / 32, correlation), in [0, 1]; a pair at or above the threshold is a near
duplicate. A near-uniform photo (a blank, a black frame) has neither a stable hash nor a correlation: it is
never confirmed (only the content hash groups such files).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

DEFAULT_THRESHOLD = 0.50  # chosen on the "tune" half of Flickr8k dev (benchmarks/duplicates.json): bursts <= 0.31
BLANK_STD = 6.0  # grey levels (0-255) of the 32 x 32 thumbnail: below this a photo counts as near-uniform
HASH_SIZE, DCT_SIZE, THUMB = 8, 32, 16


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(DCT_SIZE)


@dataclass(frozen=True)
class Fingerprint:
    """What confirmation and the keep rule read of one photo."""

    phash: int  # 64 bits
    thumb: np.ndarray  # (16 * 16 * 3,) float32, each channel standardised; zeros when blank
    blank: bool  # near-uniform: never confirmed as a near duplicate
    sharpness: float  # variance of the Laplacian of the grey image at 256 px (higher: sharper)


def phash(grey32: np.ndarray) -> int:
    """64-bit DCT hash of a (32, 32) grey array."""
    coeffs = (_DCT @ np.asarray(grey32, np.float64) @ _DCT.T)[:HASH_SIZE, :HASH_SIZE].reshape(-1)
    bits = coeffs > np.median(coeffs[1:])  # the DC term (mean brightness) left out of the median
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def sharpness(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: blur lowers it."""
    g = np.asarray(grey, np.float64)
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


def fingerprint(image: Image.Image) -> Fingerprint:
    rgb = image.convert("RGB")
    grey32 = np.asarray(rgb.convert("L").resize((DCT_SIZE, DCT_SIZE), Image.BILINEAR, reducing_gap=2.0), np.float32)
    blank = float(grey32.std()) < BLANK_STD
    small = np.asarray(rgb.resize((THUMB, THUMB), Image.BILINEAR, reducing_gap=2.0), np.float32).reshape(-1, 3)
    std = small.std(0)
    thumb = np.zeros_like(small) if blank else (small - small.mean(0)) / np.where(std > 1e-3, std, 1.0)
    side = rgb.copy()
    side.thumbnail((256, 256))
    return Fingerprint(phash(grey32), thumb.reshape(-1).astype(np.float32), blank,
                       sharpness(np.asarray(side.convert("L"), np.float32)))


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def pair_score(a: Fingerprint, b: Fingerprint) -> float:
    """How surely two photos are copies of one, in [0, 1]; 0 when either is near-uniform."""
    if a.blank or b.blank:
        return 0.0
    hash_part = 1.0 - hamming(a.phash, b.phash) / 32.0
    corr = float(np.dot(a.thumb, b.thumb) / len(a.thumb))
    return float(np.clip(min(hash_part, corr), 0.0, 1.0))
