"""Read photos from disk into small RGB images for the image tower.

`read_image` turns one path into a `DecodedImage` or raises `DecodeError` with a reason a person can act
on; `iter_decoded` does the same for a stream of paths on a thread pool, in order, turning every failure
into a `Skipped` so that one bad file never stops an indexing run.

What a decoded image looks like:

* RGB, 8 bits per channel, whatever the source mode (palette, grey, 16-bit, float, CMYK, with alpha —
  transparency is composited onto white).
* EXIF orientation applied, first frame of an animation.
* Small: JPEGs are decoded at reduced scale with libjpeg's draft mode (never below `target_size` on
  either side), and every image is then shrunk so its shorter side is at most ``2 * target_size``.
  `width`/`height` in the record are still the original full-resolution size (after rotation).
* With `prepare` (the encoder's resize), the record holds the resized image; JPEGs that draft mode would
  not shrink then decode straight into an array (`indexer.jpeg_array`), the same pixels without Pillow's.

Safety: the pixel count declared in the header is checked against `max_pixels` before any pixel is
decoded. Pillow's own global limit (``PIL.Image.MAX_IMAGE_PIXELS``) is left untouched; it raises
`DecompressionBombError` above twice its value during `Image.open`, which we turn into a `DecodeError`
too. This module changes no global state on import; pillow-heif's opener is registered on first use.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

import numpy as np
from PIL import Image, UnidentifiedImageError

from xmodal.indexer.ingest import jpeg_array
from xmodal.indexer.ingest.embedded_text import embedded_text
from xmodal.indexer.records import DecodedImage, Skipped
from xmodal.indexer.ingest.stages import ordered_map

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 120_000_000
"""Largest declared width*height we decode: above the biggest common camera sensors (~102 MP medium
format), far below what a decompression bomb declares (a 40000x40000 PNG is 1.6 G pixels, 4.8 GB as RGB).
Note that Pillow warns (`DecompressionBombWarning`) between its own limit of ~89 MP and twice that."""

_EXIF_IFD = 0x8769
_TAG_ORIENTATION = 0x0112
_TAG_DATETIME = 306
_TAG_DATETIME_ORIGINAL = 36867

_TRANSPOSE = {  # EXIF orientation -> the operation that makes the image upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})

_heif_lock = threading.Lock()
_heif_done = False


class DecodeError(Exception):
    """A file that cannot be turned into an image; `reason` is meant for the user. str: ``path: reason``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def read_image(path: str, target_size: int = 224, max_pixels: int = DEFAULT_MAX_PIXELS,
               prepare: Callable[[Image.Image | np.ndarray], Image.Image] | None = None) -> DecodedImage:
    """Read the file at `path` once and decode it into a `DecodedImage` (see the module docstring).

    `size`, `mtime` and `sha256` describe exactly the bytes that were decoded. `taken_at` is the EXIF
    DateTimeOriginal, else DateTime, or None. Raises `DecodeError` for anything that stops the file from
    being used: missing, unreadable, a folder, empty, not an image, too many pixels, corrupt or truncated.

    With `prepare` (the encoder's resize to its input, taking a PIL image or an upright (H, W, 3) uint8
    array) the record's image is ``prepare(pixels)``; most JPEGs then skip Pillow's own image and decode
    straight into an array (`indexer.jpeg_array`, the same pixels).
    """
    if target_size < 1:
        raise ValueError(f"target_size must be at least 1, got {target_size}")
    path = os.fsdecode(os.fspath(path))
    data, size, mtime, ctime, inode = _read_bytes(path)
    sha256 = hashlib.sha256(data).hexdigest()
    _register_heif_once()

    try:
        opened = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError(path, f"not a recognised image format: {_describe_content(data)}; "
                                "check that it really is a photo, or remove it") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the warning: if made an error
        raise DecodeError(path, _pillow_bomb_reason(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a broken header can raise nearly anything (incl. warnings-as-errors)
        raise DecodeError(path, f"unreadable image header ({_exc_text(exc)}); the file is probably corrupt") from None

    im = opened
    rgb = None
    try:
        try:
            width, height = im.size
            if width * height > max_pixels:
                raise DecodeError(path, (
                    f"image declares {width}x{height} = {width * height:,} pixels, more than the limit of "
                    f"{max_pixels:,} (possible decompression bomb); not decoded. If it is a genuine photo, "
                    "raise max_pixels"))
            if getattr(im, "is_animated", False):
                im.seek(0)
            orientation, taken_at = _read_exif(im)
            description = embedded_text(im)
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            if prepare is not None and jpeg_array.fast_path_applies(im, target_size):
                rgb = jpeg_array.decode_upright(data, orientation)  # an upright array, or None: Pillow below
            if rgb is None:
                im.draft("RGB", (target_size, target_size))  # JPEG only; keeps both sides >= target_size
                im.load()
                rgb = _shrink(_to_rgb(im), 2 * target_size)
                method = _TRANSPOSE.get(orientation)
                if method is not None:
                    rgb = rgb.transpose(method)
        except DecodeError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DecodeError(path, _pillow_bomb_reason(exc)) from None
        except Exception as exc:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, zlib errors...
            raise DecodeError(path, f"corrupt or truncated image data ({_exc_text(exc)}); the file may be "
                                    "incomplete: copy it again from its source") from None
    finally:
        if rgb is not im:  # returned as it is (no copy): closing it would free the pixels
            im.close()

    return DecodedImage(path=path, size=size, mtime=mtime, sha256=sha256, width=width, height=height,
                        taken_at=taken_at, image=rgb if prepare is None else prepare(rgb), ctime=ctime, inode=inode,
                        description=description)


def iter_decoded(
    paths: Iterable[str | Skipped],
    target_size: int = 224,
    workers: int = 2,
    prefetch: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    prepare: Callable[[Image.Image], Image.Image] | None = None,
) -> Iterator[DecodedImage | Skipped]:
    """Decode `paths` on `workers` threads, yielding results in input order.

    `Skipped` inputs pass through unchanged at their position. A file that fails becomes
    ``Skipped(path, reason)``: the `DecodeError` reason, or for an unexpected exception its type and
    message (the traceback is logged at debug level). `paths` is consumed lazily, and at most `prefetch`
    decodes are submitted and not yet yielded at any time, so memory stays bounded. Exceptions raised by
    `paths` itself (e.g. `FileNotFoundError` from the walk) propagate. Closing the generator early cancels
    decodes that have not started.

    `prepare`, when given, also runs on the worker threads on each decoded image (the encoder's own
    resize to its input size, `Preprocess.fit`), so that work overlaps inference too.
    """
    def decode(item: str | Skipped) -> DecodedImage | Skipped:
        if isinstance(item, Skipped):
            return item
        return _decode_or_skip(os.fsdecode(os.fspath(item)), target_size, max_pixels, prepare)

    return ordered_map(decode, paths, workers=workers, prefetch=prefetch, name="xmodal-decode",
                       initializer=_one_core_per_decoder)


def _one_core_per_decoder() -> None:
    """torch kernels that `prepare` runs on a decode thread (the encoder's resize) stay on that thread: each
    decoder is one busy core, not an OpenMP team of its own beside the inference lanes. The setting is per
    calling thread; torch is not imported here if nothing else has."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _decode_or_skip(path: str, target_size: int, max_pixels: int,
                    prepare: Callable[[Image.Image], Image.Image] | None = None) -> DecodedImage | Skipped:
    """`read_image` (then `prepare`), with every failure turned into a `Skipped` (runs on a worker thread)."""
    try:
        return read_image(path, target_size=target_size, max_pixels=max_pixels, prepare=prepare)
    except DecodeError as exc:
        return Skipped(path, exc.reason)
    except Exception as exc:  # noqa: BLE001 - one odd file must never abort the stream
        logger.debug("unexpected error decoding %s", path, exc_info=True)
        return Skipped(path, f"unexpected error while decoding ({_exc_text(exc)}); please report it")


def _read_bytes(path: str) -> tuple[bytes, int, float, float, int]:
    """The whole content of `path` with its size and mtime, taken from the same open file."""
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise DecodeError(path, "file not found (moved or deleted since the folder was scanned?); "
                                "scan the folder again") from None
    except PermissionError:
        raise DecodeError(path, "permission denied; check the file's permissions") from None
    except OSError as exc:
        raise DecodeError(path, f"cannot open: {_os_reason(exc)}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise DecodeError(path, "is a folder, not an image file")
        if not stat.S_ISREG(st.st_mode):
            raise DecodeError(path, "not a regular file (a device, FIFO or socket)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
    except OSError as exc:
        raise DecodeError(path, f"cannot read: {_os_reason(exc)}") from None
    finally:
        os.close(fd)
    if not data:
        raise DecodeError(path, "empty file (0 bytes); it was probably not copied completely")
    return data, len(data), st.st_mtime, st.st_ctime, st.st_ino


def _register_heif_once() -> None:
    """Teach Pillow to open HEIC/HEIF through pillow-heif, the first time it is needed, if installed."""
    global _heif_done
    if _heif_done:
        return
    with _heif_lock:
        if _heif_done:
            return
        try:
            from pillow_heif import register_heif_opener
        except ImportError:
            logger.debug("pillow-heif is not installed: HEIC/HEIF photos will be skipped")
        else:
            register_heif_opener()
        _heif_done = True


def _read_exif(im: Image.Image) -> tuple[int, datetime | None]:
    """EXIF orientation (1 if absent or invalid) and capture time of `im`. Never raises."""
    try:
        exif = im.getexif()
    except Exception:  # noqa: BLE001 - a corrupt EXIF block must not cost us the photo
        logger.debug("ignoring unreadable EXIF data", exc_info=True)
        return 1, None
    orientation = exif.get(_TAG_ORIENTATION, 1)
    if not isinstance(orientation, int) or orientation not in range(1, 9):
        orientation = 1
    taken_at = None
    try:
        taken_at = parse_exif_datetime(exif.get_ifd(_EXIF_IFD).get(_TAG_DATETIME_ORIGINAL))
    except Exception:  # noqa: BLE001
        logger.debug("ignoring unreadable EXIF sub-IFD", exc_info=True)
    if taken_at is None:
        taken_at = parse_exif_datetime(exif.get(_TAG_DATETIME))
    return orientation, taken_at


def parse_exif_datetime(value: object) -> datetime | None:
    """Parse an EXIF date ``"YYYY:MM:DD HH:MM:SS"`` (str or bytes) to a naive datetime; None if unusable."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    text = value.strip("\x00 \t\r\n")
    if len(text) < 19:
        return None
    text = text[:4] + ":" + text[5:7] + ":" + text[8:19]  # tolerate '-' as the date separator
    try:
        return datetime.strptime(text, "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I;16") or mode == "I" or mode == "F":
        return Image.fromarray(_grey_to_uint8(np.asarray(im), mode)).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def _grey_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Scale a high-bit-depth grey array to 0..255 (not clipping it).

    16-bit modes map 0..65535 linearly onto 0..255. Mode ``I`` (32-bit int) is read as 16-bit when its
    values fit 0..65535 (what 16-bit PNG/TIFF/PNM decoders produce), else stretched min..max. Mode ``F``
    is read as 0..1 when it fits, else stretched min..max.
    """
    a = a.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        scaled = a / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        scaled = a * 255.0
    elif hi > lo:
        scaled = (a - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(a)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _shrink(im: Image.Image, max_short_side: int) -> Image.Image:
    """`im` resized (aspect kept) so its shorter side is at most `max_short_side`."""
    w, h = im.size
    short = min(w, h)
    if short <= max_short_side:
        return im
    scale = max_short_side / short
    size = (max_short_side, max(1, round(h * scale))) if w == short else (max(1, round(w * scale)), max_short_side)
    return im.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def _describe_content(data: bytes) -> str:
    """A cheap guess at what non-image bytes are, for the error message."""
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head or b"<body" in head:
        return "it looks like an HTML page (a web page saved with an image name?)"
    if head.startswith(b"<?xml") or head.startswith(b"<svg"):
        return "it looks like XML/SVG text"
    if head.startswith(b"%pdf"):
        return "it looks like a PDF document"
    if head.startswith(b"pk\x03\x04"):
        return "it looks like a ZIP archive"
    try:
        sample = data[:512].decode("utf-8")
    except UnicodeDecodeError:
        sample = None
    if sample is not None and all(c.isprintable() or c in "\r\n\t" for c in sample):
        return "it looks like a text file"
    return f"unknown binary data (starts with {data[:8].hex(' ')})"


def _pillow_bomb_reason(exc: Exception) -> str:
    """A `DecodeError` reason for Pillow's own decompression-bomb check."""
    m = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(exc))
    declared = f"declares {int(m.group(1)):,} pixels, more than Pillow's limit of {int(m.group(2)):,}" if m else str(exc)
    return (f"image {declared} (possible decompression bomb); not decoded. If it is a genuine photo, "
            "save a smaller copy to index")


def _exc_text(exc: BaseException) -> str:
    """``Type: message`` for an exception, for reasons shown to the user."""
    msg = str(exc)
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _os_reason(exc: OSError) -> str:
    """A short human reason for an OS error, without repeating the path."""
    return (exc.strerror or type(exc).__name__).lower()
