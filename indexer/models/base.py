"""The encoder interface every dual encoder shares, and the pixel preprocessing that travels with a checkpoint.

    enc.encode_images([PIL.Image, ...]) -> np.ndarray (n, dim) float32, L2-normalised
    enc.encode_texts(["a dog", ...])     -> np.ndarray (n, dim) float32, L2-normalised

Implementations: `lite_encoder.LiteEncoder` (the bundled model) and `clip.HFClipEncoder` (CLIP family);
`encoders` is the registry that names them.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch


class ModelUnavailable(Exception):
    """The model's weights or code are missing; the message says what to install."""


@dataclass(frozen=True)
class Preprocess:
    """Pixel preprocessing that travels with a checkpoint. mean/std are in 0..255 units."""

    size: int = 224
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    resize: str = "squash"  # "squash": whole photo to size x size (as the training images); "crop": centre crop

    def fit(self, im: Image.Image | np.ndarray) -> Image.Image:
        """One photo (PIL, or an (H, W, 3) uint8 RGB array) -> RGB size x size, as the model sees it (centre
        crop if asked, then bicubic). Idempotent (an image already at size comes back as it is), so the
        indexer runs it on its decode threads."""
        if isinstance(im, np.ndarray):
            if self.resize == "crop":
                h, w = im.shape[:2]
                s = min(w, h)
                im = im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
            return resize_bicubic(im, self.size)
        if im.mode == "RGB" and im.size == (self.size, self.size):
            return im
        if self.resize == "crop":
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        return resize_bicubic(im if im.mode == "RGB" else im.convert("RGB"), self.size)

    def revision(self, checkpoint_sha256: str) -> str:
        """The revision of the vectors a checkpoint (by its sha256) makes with this preprocessing: 16 hex
        digits that change when either does (a library records it: indexer.storage.revision)."""
        key = json.dumps([checkpoint_sha256, self.size, [float(x) for x in self.mean],
                          [float(x) for x in self.std], self.resize])
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def array(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB PIL images -> (B, size, size, 3) uint8, before normalisation."""
        return np.stack([np.asarray(self.fit(im)) for im in images])

    def __call__(self, images: Sequence[Image.Image]) -> "torch.Tensor":
        """RGB PIL images -> (B, 3, size, size) float32, normalised (the torch path)."""
        import torch

        x = (self.array(images).astype(np.float32) - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)
        return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def resize_bicubic(im: Image.Image | np.ndarray, size: int) -> Image.Image:
    """RGB image (PIL or (H, W, 3) uint8) -> PIL size x size, antialiased bicubic: Pillow's BICUBIC filter
    (pixels agree within 0.03 levels on average) through torch's vectorised uint8 kernel, about 3x faster
    than Pillow on this project's CPU. Uses as many threads as torch allows the calling thread (decode
    threads: 1). In a process that has not imported torch (a search: one query photo) Pillow itself resizes,
    rather than paying seconds to import torch for one image."""
    torch = sys.modules.get("torch")
    if torch is None:
        pil = Image.fromarray(np.ascontiguousarray(im, np.uint8)) if isinstance(im, np.ndarray) else im
        return pil if pil.size == (size, size) else pil.resize((size, size), Image.Resampling.BICUBIC)
    if isinstance(im, np.ndarray):
        a = np.require(im, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])  # flips and rotations arrive as views
    elif im.size == (size, size):
        return im
    else:
        a = np.array(im, dtype=np.uint8)
    if a.shape[:2] == (size, size):
        return Image.fromarray(a)
    x = torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W), channels-last memory
    y = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True)  # (1, 3, size, size) uint8
    y = y.contiguous(memory_format=torch.channels_last)  # the kernel returns NCHW; PIL wants HWC bytes
    return Image.fromarray(y[0].permute(1, 2, 0).numpy())


class Encoder(Protocol):
    name: str
    dim: int
    preprocess: Preprocess

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


def decode_size(encoder) -> int:
    """The image side the encoder needs, so decoding (JPEG draft mode) never goes below it."""
    pre = getattr(encoder, "preprocess", None)
    return int(getattr(encoder, "image_size", None) or getattr(pre, "size", None) or 224)


def input_fit(encoder):
    """The encoder's resize to its input size (`Preprocess.fit`), for the decode threads to run; None when the
    encoder has its own preprocessing (CLIP-family checkpoints)."""
    return getattr(getattr(encoder, "preprocess", None), "fit", None)

