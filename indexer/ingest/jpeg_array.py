"""JPEG bytes straight to an upright (H, W, 3) uint8 array, for the indexer's fast path.

Most photos are JPEGs, and the image tower needs only a small resized copy of each. Pillow decodes through
libjpeg-turbo into its own image, which stores RGB as 4 bytes per pixel, and the resize then has to copy it
out again; simplejpeg runs the same libjpeg-turbo into a numpy array (the pixels are bit-identical to
Pillow's, tested), which `indexer.encoders.resize_bicubic` resizes directly. On this project's 2-core CPU
that saves about a quarter of the per-photo decoding work (`benchmarks/runtimes.py` measures indexing).

The fast path covers baseline and progressive JPEGs in YCbCr or greyscale that Pillow would decode at full
scale anyway (neither side at least twice the model's input, so draft mode would not shrink them). Anything
else, simplejpeg missing, or any complaint from the decoder (it is strict about corrupt data, where Pillow
may not be) returns None, and the caller decodes with Pillow as before, keeping its error messages.
"""
from __future__ import annotations

import logging

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

try:
    import simplejpeg
except ImportError:  # optional: without it every photo takes the Pillow path
    simplejpeg = None

JPEG_FORMATS = frozenset({"JPEG", "MPO"})  # MPO: a phone's JPEG with extra frames; the first is the photo


def fast_path_applies(im: Image.Image, target_size: int) -> bool:
    """Whether `decode_upright` can stand in for Pillow on this lazily opened image: a JPEG (colour or grey)
    that Pillow's draft mode would decode at full scale (scale = min(w // t, h // t) < 2)."""
    if simplejpeg is None or im.format not in JPEG_FORMATS or im.mode not in ("RGB", "L"):
        return False
    w, h = im.size
    return min(w // target_size, h // target_size) < 2


def decode_upright(data: bytes, orientation: int) -> np.ndarray | None:
    """JPEG bytes -> (H, W, 3) uint8 RGB with the EXIF `orientation` applied, or None if the decoder objects
    (the caller then decodes with Pillow, which reports errors in its own words)."""
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB")  # grey JPEGs come out replicated, as Pillow's
    except Exception as exc:  # noqa: BLE001 - ValueError for corrupt data, anything else: let Pillow decide
        logger.debug("simplejpeg declined (%s); decoding with Pillow", exc)
        return None
    return orient(pixels, orientation)


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, C) array -> the same pixels upright for EXIF `orientation` 1..8, as Pillow's `exif_transpose`
    (a view where it can be; 1 and unknown values leave it as it is)."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(a, -1)
    if orientation == 7:
        return a[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(a, 1)
    return a
