"""Query photos uploaded to the web server: the size message, the pixel check from the header, and the
decode itself, which runs on the server's few decode threads and gives the memory it freed back.
Errors are `HTTPProblem`s, answered as JSON 400s."""
from __future__ import annotations

import ctypes
import os
import tempfile

from xmodal.indexer.ingest.decode import DecodeError, read_image

from xmodal.engine.web.errors import HTTPProblem


def too_big(length: int | None, limit: int) -> str:
    size = f" ({length / 2**20:.1f} MB)" if length else ""  # MB as the docs count them: 2**20 bytes
    return f"the uploaded file is too large{size}; the limit is {limit / 2**20:.0f} MB: send a smaller copy"


def release_freed_memory() -> None:
    """Give the memory a large decode freed back to the system (glibc's malloc_trim); a no-op elsewhere."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def check_pixels(path: str, name: str, max_pixels: int) -> None:
    """Refuse, in the page's words, a query photo with more pixels than the limit (read from its header)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError, ValueError):
        return  # not an image Pillow knows: read_image says what is wrong with it
    if width * height > max_pixels:
        raise HTTPProblem(400, f"{os.path.basename(name)} is {width}x{height} ({width * height / 1e6:.3g} megapixels); "
                               f"a query photo may have at most {max_pixels / 1e6:.3g} megapixels: send a smaller copy")


def decode_upload(data: bytes, name: str, max_pixels: int):
    """Decode an upload with the indexer's robust decoder (pixel limit from the header, EXIF, modes)."""
    fd, tmp = tempfile.mkstemp(prefix="xmodal-upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        check_pixels(tmp, name, max_pixels)
        image = read_image(tmp, max_pixels=max_pixels).image
        image.load()
        return image
    except DecodeError as e:
        raise HTTPProblem(400, f"cannot use {os.path.basename(name)!s} as a query image: {e.reason}") from e
    finally:
        os.unlink(tmp)
        release_freed_memory()
