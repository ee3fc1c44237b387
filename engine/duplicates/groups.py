"""Grouping confirmed pairs into duplicate groups and choosing the copy to keep, pure.

Keep rule: the largest pixel count, then the oldest (EXIF date taken, else the file's modification time),
then the sharpest (variance of the Laplacian), then the first indexed; `why` says which rule decided.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

from xmodal.indexer.records import path_json


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def connected_groups(pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """The connected components (2 members or more) of the pairs' graph: sorted ids, sorted by first id."""
    uf = UnionFind()
    for a, b in pairs:
        uf.union(int(a), int(b))
    comps: dict[int, list[int]] = {}
    for x in list(uf.parent):
        comps.setdefault(uf.find(x), []).append(x)
    return sorted((sorted(c) for c in comps.values() if len(c) > 1), key=lambda c: c[0])


@dataclass(frozen=True)
class Member:
    """One photo of a group, with what the keep rule and the web view show."""

    id: int
    path: str
    width: int
    height: int
    bytes: int
    mtime: float
    sha256: str
    taken_at: datetime | None = None
    sharpness: float | None = None  # None: not measured (exact copies have the same pixels)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def date(self) -> datetime:
        """When the photo was taken, else the file's modification time (naive, local)."""
        if self.taken_at is not None:
            return self.taken_at.replace(tzinfo=None)
        return datetime.fromtimestamp(self.mtime, timezone.utc).astimezone().replace(tzinfo=None)

    def to_json(self) -> dict:
        return {"id": self.id, **path_json(self.path), "width": self.width, "height": self.height,
                "bytes": self.bytes, "date": self.date.isoformat(timespec="seconds"),
                "date_source": "taken" if self.taken_at is not None else "file",
                "sharpness": None if self.sharpness is None else round(self.sharpness, 1)}


@dataclass(frozen=True)
class DuplicateGroup:
    """Copies of one photo. kind: "exact" (the same bytes) or "near" (edited copies); keep: the suggested id."""

    kind: str
    members: tuple[Member, ...]
    keep: int
    why: str
    score: float | None = None  # near groups: the lowest confirmation score that joined them

    @property
    def ids(self) -> list[int]:
        return [m.id for m in self.members]

    @property
    def paths(self) -> list[str]:
        return [m.path for m in self.members]

    def to_json(self) -> dict:
        return {"kind": self.kind, "ids": self.ids, "paths": [path_json(p)["path"] for p in self.paths],
                "keep": self.keep, "why": self.why,
                "score": None if self.score is None else round(self.score, 4),
                "members": [m.to_json() for m in self.members]}


def choose_keep(members: Iterable[Member]) -> tuple[int, str]:
    """(id to keep, why): largest pixel count, then oldest, then sharpest, then first indexed."""
    ms = sorted(members, key=lambda m: m.id)
    if len(ms) < 2:
        raise ValueError("a group has at least two photos")
    biggest = max(m.pixels for m in ms)
    left = [m for m in ms if m.pixels == biggest]
    if len(left) == 1:
        runner = max((m for m in ms if m is not left[0]), key=lambda m: m.pixels)
        return left[0].id, (f"largest: {left[0].width}x{left[0].height} pixels "
                            f"(next: {runner.width}x{runner.height})")
    size = f"same size ({left[0].width}x{left[0].height})"
    oldest = min(m.date for m in left)
    older = [m for m in left if m.date == oldest]
    if len(older) == 1:
        what = "taken" if older[0].taken_at is not None else "file dated"
        return older[0].id, f"{size}; oldest: {what} {oldest.isoformat(sep=' ', timespec='seconds')}"
    sharp = [m for m in older if m.sharpness is not None]
    if len(sharp) == len(older):
        best = max(m.sharpness for m in sharp)
        top = [m for m in sharp if m.sharpness == best]
        if len(top) == 1:
            runner = max(m.sharpness for m in sharp if m is not top[0])
            return top[0].id, f"{size}, same date; sharpest (detail {best:.0f} vs {runner:.0f})"
        older = top
    return older[0].id, f"{size}, same date" + ("" if len({m.sha256 for m in older}) > 1 else ", same bytes") + \
        "; first indexed"
