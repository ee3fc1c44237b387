"""Which weights made a library's vectors, and the re-embedding a change of weights calls for.

A bundled model keeps its name across versions, but its trained heads can change (base's went from 260 to
280 px on 2026-12-01): vectors made by one version's weights and queries encoded by another's are
incomparable. A library records the revision of the weights its vectors come from (meta ``revision``:
`Encoder.revision`, the first 16 hex digits of the heads checkpoint's sha256; encoders that do not say,
CLIP-family folders, are not tracked).

When an index run meets a library whose revision is another, the new revision is recorded with a watermark
per modality (meta ``stale_below``: the next row id then). Every row below it is stale until it is embedded
again, and a re-embedded row always gets a new id above it (ids are AUTOINCREMENT, never reused), so an
interrupted run leaves exactly the rows still to do. Search refuses a library whose recorded revision is not
its query encoder's (`search_problem`), naming the command that cures it.
"""
from __future__ import annotations

import numpy as np

from xmodal.indexer.storage.library import MODALITIES, Library

REVISION, STALE_BELOW = "revision", "stale_below"


def encoder_revision(encoder) -> str | None:
    """The revision of `encoder`'s weights, or None when it does not say (then nothing is tracked)."""
    revision = getattr(encoder, "revision", None)
    return str(revision) if revision else None


def recorded_revision(library: Library) -> str | None:
    """The revision of the weights the library's vectors come from; None when not recorded (a library made
    before revisions were kept, or by an encoder that does not say)."""
    value = library.store.get_meta(REVISION)
    return str(value) if value else None


def record_revision(library: Library, revision: str | None) -> None:
    if revision:
        library.store.set_meta(REVISION, revision)


def _ids(library: Library, modality: str) -> np.ndarray:
    store = library.store
    return store.all_image_ids() if modality == "images" else store.all_text_ids()


def begin_reembed(library: Library, revision: str) -> dict[str, int]:
    """Mark every current row of both modalities stale and record `revision` as the library's. Returns the
    stale counts. The watermark is written before the revision: a crash in between leaves the old revision
    recorded, and the next run starts over with a watermark at least as high."""
    marks, counts = {}, {}
    for modality in MODALITIES:
        ids = _ids(library, modality)
        marks[modality] = int(ids.max()) + 1 if len(ids) else 0
        counts[modality] = int(len(ids))
    earlier = library.store.get_meta(STALE_BELOW) or {}
    library.store.set_meta(STALE_BELOW, {m: max(marks[m], int(earlier.get(m, 0))) for m in MODALITIES})
    library.store.set_meta(REVISION, revision)
    return counts


def stale_ids(library: Library, modality: str) -> np.ndarray:
    """Ids of `modality` rows whose vectors come from the library's earlier weights (int64, ascending)."""
    below = (library.store.get_meta(STALE_BELOW) or {}).get(modality)
    if not below:
        return np.empty(0, np.int64)
    ids = _ids(library, modality)
    return ids[ids < int(below)]


def finish_reembed(library: Library) -> bool:
    """Drop the watermark once no stale row is left; True when none is (or none ever was)."""
    if library.store.get_meta(STALE_BELOW) is None:
        return True
    if any(len(stale_ids(library, m)) for m in MODALITIES):
        return False
    library.store.set_meta(STALE_BELOW, None)
    return True


def unrecorded_is_stale(model: str | None) -> bool:
    """Whether a library of `model` that records no revision was embedded with earlier weights than this
    xmodal's (`BundledModel.unrecorded_stale`: base, whose 260-px files shipped before revisions were kept)."""
    from xmodal.indexer.models.towers import BUNDLED

    spec = BUNDLED.get(model or "")
    return bool(spec is not None and spec.unrecorded_stale)


def search_problem(library: Library, revision: str | None) -> str | None:
    """Why the library cannot be searched with queries from weights of `revision`, or None when it can: its
    vectors come from other weights of the same model (an upgrade changed them, and no index run has
    re-embedded the library since). A library that records no revision is presumed current, unless its
    model's weights are known to have changed since (`unrecorded_is_stale`)."""
    recorded = recorded_revision(library)
    if revision is None or recorded == revision:
        return None
    if recorded is None and not unrecorded_is_stale(library.model):
        return None
    n = library.store.count_images()
    was = (f"revision {recorded}" if recorded else "revision not recorded: made by an xmodal from before "
           "2026-12-01")
    return (f"library {library.root} was indexed with other weights of model {library.model!r} ({was}; this "
            f"xmodal's is {revision}), so its vectors and these queries are incomparable: run "
            f"`xmodal index --library {library.root}` once to embed its {n} photos (and its texts) again")


def stale_counts(library: Library) -> dict[str, int]:
    """How many rows of each modality still carry vectors from the earlier weights."""
    return {m: int(len(stale_ids(library, m))) for m in MODALITIES}
