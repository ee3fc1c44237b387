"""Compact per-image patch tokens for the cross-attention reranker, stored at index time so reranking
opens no image file at query time.

    projector = PatchProjector.from_checkpoint(path)   # models/patch_projector.py: the reranker's PCA
    store = PatchStore(library_dir, projector.spec)    # one memory-mapped file per library
    store.write(ids, sha256s, projector(raw_tokens))   # (n, 49, 1280) -> (n, 49, 128) float16
    tokens, found = store.read(ids, sha256s)           # (n, 49, 128) float16, (n,) bool

Layout of `patches.f16`: fixed-size slots addressed by image id, each an 8-byte tag (the first 8 bytes of
the photo's SHA-256) followed by the tokens as float16: 49 x 128 x 2 = 12,544 bytes + 8 per image. A slot is
valid only when its tag equals the stored photo's hash, so a crash between the store commit and the token
write, an id reused after a delete, or a photo edited in place can never pair a photo with another's tokens:
such slots read as missing and `xmodal index` fills them in. The projection's fingerprint (`spec`) is kept
in `patches.json`; a library whose file was made with another projection starts a fresh file.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np


logger = logging.getLogger(__name__)

FILENAME = "patches.f16"
SPEC_FILENAME = "patches.json"
TAG_BYTES = 8
MAX_SLOT_BYTES = 16 * 1024


class PatchTokenError(Exception):
    """Patch tokens cannot be made or stored; the message says what to do."""


@dataclass(frozen=True)
class PatchSpec:
    """What a library's stored tokens are: shape, dtype and the projection they came from."""

    tokens: int  # patches per image (49 for a 7 x 7 map)
    dim: int  # channels per stored token
    source: str  # fingerprint of the projection (a change invalidates every stored token)

    @property
    def slot_bytes(self) -> int:
        return TAG_BYTES + self.tokens * self.dim * 2


class PatchStore:
    """The memory-mapped token file of one library (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike, spec: PatchSpec | None = None):
        self.root = Path(root)
        self.path, self.spec_path = self.root / FILENAME, self.root / SPEC_FILENAME
        stored = self._stored_spec()
        if spec is None:
            spec = stored
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
            return PatchSpec(**json.loads(self.spec_path.read_text()))
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
                f.write(_tag(sha) + t.tobytes())
            f.flush()
            os.fsync(f.fileno())

    def read(self, ids: Sequence[int], sha256s: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """-> (n, P, dim) float16 tokens (zeros where missing), (n,) bool found (tag matches the hash)."""
        spec = self.spec
        out = np.zeros((len(ids), spec.tokens, spec.dim), np.float16) if spec else np.zeros((len(ids), 0, 0))
        found, rows = self._match(ids, sha256s)
        if found.any():
            slots = self._slots()
            out[found] = slots[rows[found], TAG_BYTES:].view(np.float16).reshape(-1, spec.tokens, spec.dim)
        return out, found

    def has(self, ids: Sequence[int], sha256s: Sequence[str]) -> np.ndarray:
        """(n,) bool: whether each photo has valid tokens, reading only the slots' tags."""
        return self._match(ids, sha256s)[0]

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


_EMPTY = bytes(TAG_BYTES)  # the tag of a slot never written (a hole in the file): never valid


def _tag(sha256: str) -> bytes:
    return bytes.fromhex(sha256[:2 * TAG_BYTES])
