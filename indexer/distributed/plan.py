"""The distributed run's plan, pure: the work list cut into shards with stable names.

A shard's name is a digest of its paths, so the same work list cut the same way names the same shards on a
rerun; a shard already embedded (its file staged in the library) is merged, never embedded again."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Sequence

SHARD_SIZE = 256  # photos a shard holds: a few seconds of one CPU worker, 3 MB of patch tokens


@dataclass(frozen=True)
class Shard:
    """A slice of the work list, embedded by one worker task and written as one staged file."""

    name: str
    paths: tuple[str, ...]


def shard_name(paths: Sequence[str]) -> str:
    """A stable name for a list of paths (the digest of their bytes, in order)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(os.fsencode(p))
        h.update(b"\0")
    return h.hexdigest()[:20]


def cut(paths: Sequence[str], shard_size: int = SHARD_SIZE) -> list[Shard]:
    """`paths` in order, cut into shards of at most `shard_size` (the last may be shorter)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    return [Shard(shard_name(part), tuple(part))
            for part in (paths[i:i + shard_size] for i in range(0, len(paths), shard_size))]


def pending(shards: Sequence[Shard], staged: set[str]) -> list[Shard]:
    """The shards still to embed: those whose name is not among the staged files' names."""
    return [s for s in shards if s.name not in staged]
