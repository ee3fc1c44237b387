"""Shard files: what a worker made of one shard (records, vectors, patch tokens, skips), staged in the library.

A shard file is one ``.npz`` in ``<library>/staging/``, written atomically (temp file, fsync, rename), so a
staged shard is whole or absent. The driver merges it into the store and index and then deletes it; a run
killed in between finds it on the next run and merges it then, without embedding it again."""
from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from xmodal.indexer.records import DecodedImage, Skipped

logger = logging.getLogger(__name__)

STAGING = "staging"
SUFFIX = ".shard.npz"
FIELDS = ("path", "size", "mtime", "sha256", "width", "height", "ctime", "inode")


@dataclass
class ShardResult:
    """One embedded shard: its photos (no pixels), their vectors and patch tokens, and the files skipped."""

    name: str
    images: list[DecodedImage]
    vectors: np.ndarray  # (n, dim) float32, L2-normalised
    tokens: np.ndarray | None = None  # (n, 49, width) float16: the reranker's projected patch tokens
    skipped: list[Skipped] = field(default_factory=list)
    model: str = ""
    revision: str | None = None  # of the weights that embedded it (indexer.storage.revision); None: not said


def staging_dir(library_root: str | os.PathLike) -> Path:
    return Path(library_root) / STAGING


def shard_path(folder: str | os.PathLike, name: str) -> Path:
    return Path(folder) / f"{name}{SUFFIX}"


def staged(folder: str | os.PathLike) -> list[Path]:
    """The whole shard files in `folder`, by name (temp files of an interrupted write are not listed)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX))


def _meta(result: ShardResult) -> bytes:
    images = [{**{k: getattr(im, k) for k in FIELDS},
               "taken_at": im.taken_at.isoformat() if im.taken_at else None} for im in result.images]
    skipped = [{"path": s.path, "reason": s.reason} for s in result.skipped]
    # surrogate-escaped path bytes survive: json escapes lone surrogates as \udcXX and reads them back
    return json.dumps({"name": result.name, "model": result.model, "revision": result.revision, "images": images,
                       "skipped": skipped}).encode()


def write_shard(folder: str | os.PathLike, result: ShardResult) -> Path:
    """Write `result` as ``<folder>/<name>.shard.npz``, atomically. Returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = shard_path(folder, result.name)
    tmp = folder / f".{result.name}.{os.getpid()}.tmp"
    arrays = {"meta": np.frombuffer(_meta(result), np.uint8),
              "vectors": np.ascontiguousarray(result.vectors, np.float32)}
    if result.tokens is not None:
        arrays["tokens"] = np.ascontiguousarray(result.tokens)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


class ShardError(Exception):
    """A staged shard file cannot be read (damaged); it is deleted and its photos embedded again."""


def read_shard(path: str | os.PathLike) -> ShardResult:
    """Read a shard file written by `write_shard`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            vectors = z["vectors"].astype(np.float32, copy=False)
            tokens = z["tokens"] if "tokens" in z.files else None
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise ShardError(f"{path}: not a readable shard file ({e})") from e
    images = [DecodedImage(path=d["path"], size=int(d["size"]), mtime=float(d["mtime"]), sha256=d["sha256"],
                           width=int(d["width"]), height=int(d["height"]),
                           taken_at=datetime.fromisoformat(d["taken_at"]) if d["taken_at"] else None,
                           image=None, ctime=d["ctime"], inode=d["inode"]) for d in meta["images"]]
    if len(images) != len(vectors) or (tokens is not None and len(tokens) != len(images)):
        raise ShardError(f"{path}: {len(images)} photos but {len(vectors)} vectors; the file is damaged")
    return ShardResult(meta["name"], images, vectors, tokens,
                       [Skipped(s["path"], s["reason"]) for s in meta["skipped"]], meta.get("model", ""),
                       meta.get("revision"))
