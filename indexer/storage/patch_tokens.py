"""Compact per-image patch tokens for the cross-attention reranker, stored at index time so reranking
opens no image file at query time.

    projector = PatchProjector.from_checkpoint(path)   # models/patch_projector.py: the reranker's PCA
    store = PatchStore(library_dir, projector.spec)    # one memory-mapped file per library
    store.write(ids, sha256s, projector(raw_tokens))   # (n, P, 1280) -> (n, P, Cp) float16
    tokens, found = store.read(ids, sha256s)           # (n, P, Cp) float16, (n,) bool

P, the patches per photo, is the reranker checkpoint's: 49 (7 x 7) for the lite model, 81 (9 x 9) for base,
whose reranker stores 96 channels instead of 128 so that a slot stays within 16 KB (81 x 96 x 2 = 15,552 bytes).

Layout of `patches.f16` (layout 2): fixed-size slots addressed by image id, each a 16-byte header (an 8-byte
tag: the first 8 bytes of the photo's SHA-256; the CRC-32 of the token bytes, little-endian; 4 zero bytes)
followed by the tokens as float16: 49 x 128 x 2 = 12,544 bytes + 16 per image. A slot is valid only when its
tag equals the stored photo's hash, so a crash between the store commit and the token write, an id reused
after a delete, or a photo edited in place can never pair a photo with another's tokens: such slots read as
missing and `xmodal index` fills them in. A slot whose tokens fail their CRC (bit rot) reads as missing
too (`read`, `has(verify=True)`), so `xmodal index --verify` and `xmodal check --repair` make them again. The
projection's fingerprint and the slot layout (`spec`) are kept in `patches.json`; a library whose file was
made with another projection or layout (layout 1: an 8-byte tag, no CRC) starts a fresh file.
"""
from __future__ import annotations

import json
import logging
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np


logger = logging.getLogger(__name__)

FILENAME = "patches.f16"
SPEC_FILENAME = "patches.json"
TAG_BYTES = 8
HEADER_BYTES = 16  # tag, CRC-32 of the tokens, 4 zero bytes
LAYOUT = 2  # 1: an 8-byte tag and no CRC (files of that layout start afresh)
MAX_SLOT_BYTES = 16 * 1024


class PatchTokenError(Exception):
    """Patch tokens cannot be made or stored; the message says what to do."""


@dataclass(frozen=True)
class PatchSpec:
    """What a library's stored tokens are: shape, dtype and the projection they came from."""

    tokens: int  # patches per image (49 for a 7 x 7 map, 81 for 9 x 9)
    dim: int  # channels per stored token
    source: str  # fingerprint of the projection (a change invalidates every stored token)
    layout: int = LAYOUT  # the slot layout (a change invalidates every stored token)

    @property
    def slot_bytes(self) -> int:
        return HEADER_BYTES + self.tokens * self.dim * 2


class PatchStore:
    """The memory-mapped token file of one library (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike, spec: PatchSpec | None = None):
        self.root = Path(root)
        self.path, self.spec_path = self.root / FILENAME, self.root / SPEC_FILENAME
        stored = self._stored_spec()
        if spec is None:
            spec = stored if stored is None or stored.layout == LAYOUT else None  # an old layout: no tokens
        elif stored is not None and stored != spec:
            logger.info("%s: patch tokens were made with another projection; starting them afresh", self.root)
            self.path.unlink(missing_ok=True)
            stored = None
        self.spec = spec
        if spec is not None and stored is None:
            tmp = self.spec_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(spec)))
            os.replace(tmp, self.spec_path)
        self._map: np.memmap | None = None
        self._mapped_size = -1

    def _stored_spec(self) -> PatchSpec | None:
        try:
            return PatchSpec(**{"layout": 1, **json.loads(self.spec_path.read_text())})
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:
            logger.warning("%s is unreadable (%s); patch tokens will be made again", self.spec_path, e)
            return None

    @property
    def available(self) -> bool:
        return self.spec is not None and self.path.exists()

    def _slots(self) -> np.memmap | None:
        """(n_slots, slot_bytes) uint8 read-only map, refreshed when the file has grown."""
        size = self.path.stat().st_size if self.path.exists() else 0
        if size != self._mapped_size:
            n = size // self.spec.slot_bytes
            self._map = np.memmap(self.path, np.uint8, "r", shape=(n, self.spec.slot_bytes)) if n else None
            self._mapped_size = size
        return self._map

    def write(self, ids: Sequence[int], sha256s: Sequence[str], tokens: np.ndarray) -> None:
        """Write tokens (n, P, dim) float16 into the slots of `ids`, tagged with the photos' hashes."""
        spec = self.spec
        tokens = np.ascontiguousarray(tokens, np.float16)
        if tokens.shape[1:] != (spec.tokens, spec.dim) or len(tokens) != len(ids) or len(ids) != len(sha256s):
            raise PatchTokenError(f"{len(ids)} ids, {len(sha256s)} hashes and tokens {tokens.shape} do not match "
                                  f"({spec.tokens} x {spec.dim} per image)")
        with open(self.path, "r+b" if self.path.exists() else "w+b") as f:
            for i, sha, t in sorted(zip(ids, sha256s, tokens), key=lambda x: x[0]):
                f.seek(int(i) * spec.slot_bytes)
                data = t.tobytes()
                f.write(_tag(sha) + zlib.crc32(data).to_bytes(4, "little") + bytes(4) + data)
            f.flush()
            os.fsync(f.fileno())

    def read(self, ids: Sequence[int], sha256s: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """-> (n, P, dim) float16 tokens (zeros where missing), (n,) bool found (tag matches the hash)."""
        spec = self.spec
        out = np.zeros((len(ids), spec.tokens, spec.dim), np.float16) if spec else np.zeros((len(ids), 0, 0))
        found, rows = self._match(ids, sha256s)
        if found.any():
            slots = self._slots()
            found[found] = _crc_ok(slots[rows[found]])
            out[found] = slots[rows[found], HEADER_BYTES:].view(np.float16).reshape(-1, spec.tokens, spec.dim)
        return out, found

    def has(self, ids: Sequence[int], sha256s: Sequence[str], verify: bool = False) -> np.ndarray:
        """(n,) bool: whether each photo has valid tokens, reading only the slots' tags, or with `verify` also
        their tokens' CRC (a sequential read of the slots: ~12.5 KB per photo)."""
        found, rows = self._match(ids, sha256s)
        if verify and found.any():
            found[found] = _crc_ok(self._slots()[rows[found]])
        return found

    def corrupt(self, ids: Sequence[int], sha256s: Sequence[str]) -> np.ndarray:
        """(n,) bool: slots whose tag is the photo's but whose tokens fail their CRC (bit rot)."""
        found = self._match(ids, sha256s)[0]
        return found & ~self.has(ids, sha256s, verify=True)

    def _match(self, ids: Sequence[int], sha256s: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """-> (n,) bool found (the slot exists and its tag is the photo's hash), (n,) int64 slot row."""
        rows = np.asarray(ids, np.int64).reshape(-1)
        found = np.zeros(len(rows), bool)
        slots = self._slots() if self.available else None
        if slots is None or not len(rows):
            return found, rows
        tags = np.frombuffer(b"".join(_tag(sha) if sha else _EMPTY for sha in sha256s), np.uint8)
        tags = tags.reshape(len(rows), TAG_BYTES)
        inside = (rows >= 0) & (rows < len(slots)) & tags.any(1)  # a hole's all-zero tag is never valid
        found[inside] = (slots[rows[inside], :TAG_BYTES] == tags[inside]).all(1)
        return found, rows

    def bytes_on_disk(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def release_below(self, first_live_id: int) -> bool:
        """Give the disk space of every slot below `first_live_id` back to the file system (a hole: it reads
        as zeros, so those slots read as missing), keeping the file's size and every slot's address. For the
        slots a re-embedding left dead: re-embedded photos get new ids above the old ones. False where the
        file system cannot punch holes (nothing changes then)."""
        length = int(first_live_id) * self.spec.slot_bytes if self.spec is not None else 0
        if length <= 0 or not self.path.exists():
            return False
        return punch_hole(self.path, min(length, self.path.stat().st_size))


def punch_hole(path: str | os.PathLike, length: int) -> bool:
    """Deallocate the first `length` bytes of a file (Linux fallocate PUNCH_HOLE | KEEP_SIZE); False where the
    platform or file system cannot."""
    import ctypes

    try:
        fallocate = ctypes.CDLL(None, use_errno=True).fallocate  # the C library the process already has
    except (OSError, AttributeError):
        return False
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    fd = os.open(path, os.O_RDWR)
    try:
        if fallocate(fd, 0x01 | 0x02, 0, int(length)) != 0:  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
            logger.info("%s: the file system keeps the dead patch-token slots (%s)", path,
                        os.strerror(ctypes.get_errno()))
            return False
        return True
    finally:
        os.close(fd)


_EMPTY = bytes(TAG_BYTES)  # the tag of a slot never written (a hole in the file): never valid


def _crc_ok(slots: np.ndarray) -> np.ndarray:
    """(n, slot_bytes) uint8 slots -> (n,) bool: the tokens' CRC-32 equals the one in the header."""
    stored = slots[:, TAG_BYTES:TAG_BYTES + 4].copy().view("<u4").reshape(-1)
    return np.fromiter((zlib.crc32(row[HEADER_BYTES:]) == want for row, want in zip(slots, stored)), bool, len(slots))


def _tag(sha256: str) -> bytes:
    return bytes.fromhex(sha256[:2 * TAG_BYTES])
