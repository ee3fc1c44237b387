"""The words a photo carries in its metadata, where Pillow exposes them: EXIF ImageDescription, the Windows
XP title/comment/keywords/subject tags and UserComment, XMP dc:title, dc:description and dc:subject, and
IPTC object name, caption and keywords. For the keyword index; never raises (bad metadata only costs its
words)."""
from __future__ import annotations

import logging
import re

from PIL import Image

logger = logging.getLogger(__name__)

_EXIF_IFD = 0x8769
_DESCRIPTION = 0x010E
_XP_TAGS = (0x9C9B, 0x9C9C, 0x9C9E, 0x9C9F)  # XPTitle, XPComment, XPKeywords, XPSubject: UTF-16LE bytes
_USER_COMMENT = 0x9286
_IPTC = ((2, 5), (2, 25), (2, 120))  # object name, keywords, caption/abstract
_XMP_FIELDS = re.compile(r"<dc:(title|description|subject)\b[^>]*>(.*?)</dc:\1>", re.S)
_XMP_ITEM = re.compile(r"<rdf:li\b[^>]*>(.*?)</rdf:li>", re.S)
_TAGS = re.compile(r"<[^>]+>")
MAX_CHARS = 4000


def _text(value) -> str:
    if isinstance(value, bytes):
        for encoding in ("utf-8", "latin-1"):
            try:
                return value.decode(encoding)
            except UnicodeDecodeError:
                continue
    return value if isinstance(value, str) else ""


def _user_comment(raw) -> str:
    """EXIF UserComment: an 8-byte character code, then the text."""
    if not isinstance(raw, bytes) or len(raw) <= 8:
        return _text(raw)
    code, body = raw[:8], raw[8:]
    if code.startswith(b"UNICODE"):
        return body.decode("utf-16-be" if body[:1] == b"\0" else "utf-16-le", "ignore")
    return body.decode("utf-8", "ignore") if code.startswith(b"ASCII") or code == b"\0" * 8 else ""


def _exif_words(im: Image.Image) -> list[str]:
    exif = im.getexif()
    found = [_text(exif.get(_DESCRIPTION))]
    for tag in _XP_TAGS:
        raw = exif.get(tag)
        if isinstance(raw, tuple):  # some Pillow versions give the bytes as a tuple of ints
            raw = bytes(raw)
        if isinstance(raw, bytes):
            found.append(raw.decode("utf-16-le", "ignore"))
    found.append(_user_comment(exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT)))
    return found


def _xmp_words(im: Image.Image) -> list[str]:
    raw = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp") or b""
    xmp = _text(raw)
    found = []
    for _, body in _XMP_FIELDS.findall(xmp):
        items = _XMP_ITEM.findall(body) or [body]
        found.extend(_TAGS.sub(" ", item) for item in items)
    return found


def _iptc_words(im: Image.Image) -> list[str]:
    from PIL import IptcImagePlugin

    info = IptcImagePlugin.getiptcinfo(im) or {}
    found = []
    for key in _IPTC:
        value = info.get(key)
        for item in value if isinstance(value, list) else [value]:
            found.append(_text(item))
    return found


def embedded_text(im: Image.Image) -> str:
    """The descriptive words embedded in an opened photo's metadata, de-duplicated, one space apart."""
    parts: list[str] = []
    for reader in (_exif_words, _xmp_words, _iptc_words):
        try:
            parts.extend(reader(im))
        except Exception:  # noqa: BLE001 - malformed metadata must not cost the photo
            logger.debug("ignoring unreadable metadata (%s)", reader.__name__, exc_info=True)
    cleaned = [" ".join(p.replace("\0", " ").split()) for p in parts if p]
    return " ".join(dict.fromkeys(p for p in cleaned if p))[:MAX_CHARS]
