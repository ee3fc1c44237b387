"""Duplicates in a library: exact copies from the stored content hashes, near copies from kNN candidates
over the library's own vectors and index, confirmed from the files' pixels, then grouped.

    report = find_duplicates(library.store, library.vector_index("images"), threshold=0.6)

Reads the photos of candidate pairs only (a small decode each). A file that cannot be read is listed in
`skipped` and its pairs are left unconfirmed; it never stops the run. Nothing is ever deleted.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field


from xmodal.indexer.ingest.decode import DecodeError, read_image
from xmodal.indexer.ingest.stages import ordered_map
from xmodal.indexer.records import ImageRecord, Skipped, path_json
from xmodal.indexer.storage.stored_vectors import StoredVectors

from xmodal.engine.duplicates.candidates import DEFAULT_K, DEFAULT_MIN_SIMILARITY, candidate_pairs
from xmodal.engine.duplicates.confirm import DEFAULT_THRESHOLD, Fingerprint, fingerprint, pair_score
from xmodal.engine.duplicates.groups import DuplicateGroup, Member, choose_keep, connected_groups

logger = logging.getLogger(__name__)
BATCH = 1024  # query vectors per kNN search
DECODE_SIZE = 256  # fingerprints read a draft-mode decode of at least this many pixels a side
WORKERS = 2  # threads reading photos for fingerprints (decoding releases the GIL)


@dataclass
class DuplicateReport:
    """Groups (exact first, then near, each by first id), and what the run looked at."""

    groups: list[DuplicateGroup]
    threshold: float
    candidates: int = 0  # kNN pairs above the cosine floor (exact copies left out)
    confirmed: int = 0  # of those, confirmed from the pixels
    skipped: list[Skipped] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"groups": [g.to_json() for g in self.groups], "threshold": self.threshold,
                "candidates": self.candidates, "confirmed": self.confirmed,
                "skipped": [{**path_json(s.path), "reason": s.reason} for s in self.skipped]}


def _member(r: ImageRecord, fp: Fingerprint | None) -> Member:
    return Member(r.id, r.path, r.width, r.height, r.size, r.mtime, r.sha256, r.taken_at,
                  None if fp is None else fp.sharpness)


def find_duplicates(store, index, threshold: float = DEFAULT_THRESHOLD, k: int = DEFAULT_K,
                    min_similarity: float = DEFAULT_MIN_SIMILARITY, batch: int = BATCH) -> DuplicateReport:
    """store: the library's Store; index: its images VectorIndex (search(queries, k) -> (scores, ids))."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    by_hash: dict[str, list[int]] = {}
    for image_id, _path, digest in store.image_digests():
        by_hash.setdefault(digest, []).append(image_id)
    digest_of = {i: d for d, ids in by_hash.items() for i in ids}
    exact_pairs = [(ids[0], other) for ids in by_hash.values() for other in ids[1:]]

    _, ids, has = store.vector_state("images")
    vectors = StoredVectors(store, "images", ids[has], index.dim, page=batch)
    cands = candidate_pairs(vectors.pages(), index.search, k, min_similarity) if len(vectors) else None
    near_pairs, scores, skipped, prints = [], {}, [], {}
    records: dict[int, ImageRecord] = {}
    pending = [] if cands is None else [(int(a), int(b)) for a, b in zip(cands.a, cands.b)
                                        if digest_of.get(int(a)) != digest_of.get(int(b))]
    for part in range(0, len(pending), batch):
        chunk = pending[part:part + batch]
        want = {i for pair in chunk for i in pair} - records.keys()
        records.update({r.id: r for r in store.get_images(sorted(want))})
        _fingerprint_all([records[i] for i in sorted(want) if i in records], prints, skipped)
        for a, b in chunk:
            fa, fb = _fingerprint(records.get(a), prints, skipped), _fingerprint(records.get(b), prints, skipped)
            if fa is None or fb is None or fa.blank or fb.blank:
                continue  # unreadable, or near-uniform: never grouped by the embedding, whatever the threshold
            s = pair_score(fa, fb)
            if s >= threshold:
                near_pairs.append((a, b))
                scores[(a, b)] = s
    groups = []
    for comp in connected_groups(exact_pairs + near_pairs):
        inside = set(comp)
        missing = [i for i in comp if i not in records]
        records.update({r.id: r for r in store.get_images(missing)})
        members = tuple(_member(records[i], prints.get(i)) for i in comp if i in records)
        if len(members) < 2:
            continue
        kind = "exact" if len({m.sha256 for m in members}) == 1 else "near"
        joined = [s for (a, _), s in scores.items() if a in inside]
        if kind == "near" and any(m.sharpness is None for m in members):  # exact copies of a near copy
            members = tuple(m if m.sharpness is not None else _with_sharpness(m, prints, records, skipped)
                            for m in members)
        keep, why = choose_keep(members)
        groups.append(DuplicateGroup(kind, members, keep, why, min(joined) if joined else None))
    groups.sort(key=lambda g: (g.kind != "exact", g.ids[0]))
    return DuplicateReport(groups, threshold, len(pending), len(near_pairs), skipped)


def _read_print(record: ImageRecord) -> Fingerprint | DecodeError:
    try:
        return fingerprint(read_image(record.path, target_size=DECODE_SIZE).image)
    except DecodeError as e:
        return e


def _fingerprint_all(records: list[ImageRecord], prints: dict, skipped: list) -> None:
    """Fingerprint the photos not yet in `prints`, WORKERS at a time."""
    todo = [r for r in records if r.id not in prints]
    for r, fp in zip(todo, ordered_map(_read_print, todo, workers=WORKERS, prefetch=4 * WORKERS,
                                       name="xmodal-duplicates")):
        if isinstance(fp, DecodeError):
            logger.warning("duplicates: cannot read %s (%s); its pairs are left unconfirmed", fp.path, fp.reason)
            skipped.append(Skipped(r.path, fp.reason))
            fp = None
        prints[r.id] = fp


def _fingerprint(record: ImageRecord | None, prints: dict, skipped: list) -> Fingerprint | None:
    if record is None:
        return None  # removed since the candidates were found
    if record.id not in prints:
        try:
            prints[record.id] = fingerprint(read_image(record.path, target_size=DECODE_SIZE).image)
        except DecodeError as e:
            logger.warning("duplicates: cannot read %s (%s); its pairs are left unconfirmed", e.path, e.reason)
            skipped.append(Skipped(record.path, e.reason))
            prints[record.id] = None
    return prints[record.id]


def _with_sharpness(m: Member, prints: dict, records: dict, skipped: list) -> Member:
    fp = _fingerprint(records[m.id], prints, skipped)
    return m if fp is None else _member(records[m.id], fp)
