"""Keeping a library's vectors and its model's weights together (indexer.storage.revision says why).

`sync_weights` runs at the start of every index run: a library recorded with other weights of its model is
marked for re-embedding, which the run then does (photos through the normal pipeline, as files that changed;
texts from their stored words, `reembed_texts`). A library from before revisions were recorded is checked by
embedding a few of its photos (or texts) again and comparing them with their stored vectors.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from typing import Sequence

import numpy as np

from xmodal.indexer.ingest.decode import iter_decoded
from xmodal.indexer.models.base import Encoder, decode_size, input_fit
from xmodal.indexer.records import DecodedImage
from xmodal.indexer.storage.index_tuning import needs_rebuild, tier
from xmodal.indexer.storage.library import MODALITIES, Library
from xmodal.indexer.storage.revision import (begin_reembed, encoder_revision, record_revision, recorded_revision,
                                              unrecorded_is_stale)
from xmodal.indexer.storage.text_tokens import DATA as TOKENS_DATA, TextTokenStore

logger = logging.getLogger(__name__)

SAMPLE = 8  # rows embedded again to tell whether an unrecorded library's vectors are this encoder's
# Their median cosine with the stored vectors: 1.0 for the same weights on the same path (another CPU's kernels
# move it by ~1e-6; the int8 image path against float32, the widest gap a runtime switch between runs makes,
# keeps a median >= 0.98, docs/models.md). Other heads can be close: base's 260-px heads against its 280-px
# ones (the same seed and recipe) give 0.90-0.95, median 0.93, on 12 Flickr8k photos.
SAME_COSINE = 0.975


def weights_verdict(library: Library, encoder: Encoder, sample: int = SAMPLE) -> str:
    """Whether the library's vectors are `encoder`'s: "same" (its recorded revision, or an unrecorded library
    whose photos embed alike again, or an empty one), "changed" (another revision recorded, an unrecorded
    library of a model whose weights changed since, or photos that embed otherwise now), "untracked" (the
    encoder names no revision) or "unknown" (unrecorded and nothing to compare: its photos' files are not
    there; it stays unrecorded, to be judged when they are)."""
    current = encoder_revision(encoder)
    if current is None:
        return "untracked"
    recorded = recorded_revision(library)
    if recorded is not None:
        return "same" if recorded == current else "changed"
    if not library.store.count_images() and not library.store.count_texts():
        return "same"  # a new library
    if unrecorded_is_stale(library.model):
        return "changed"
    same = _same_vectors(library, encoder, sample)
    return "unknown" if same is None else ("same" if same else "changed")


def sync_weights(library: Library, encoder: Encoder, sample: int = SAMPLE) -> dict[str, int] | None:
    """Make the library's recorded revision this encoder's. Returns the stale counts ({"images": n, "texts":
    m}) when its vectors turn out to come from other weights (the caller then embeds those rows again), else
    None. Call after `bind_model`, holding the writer lock."""
    verdict = weights_verdict(library, encoder, sample)
    current = encoder_revision(encoder)
    if verdict == "same":
        record_revision(library, current)
    if verdict != "changed":
        return None
    recorded = recorded_revision(library)
    was = f"revision {recorded}" if recorded else "weights other than this xmodal's"
    counts = begin_reembed(library, current)
    for modality in MODALITIES:  # HNSW cannot delete: every replaced batch would rebuild it; exact until done
        if tier(library.vector_index(modality).factory) == 1:
            library.rebuild_index(modality, "Flat")
    logger.warning("%s: its vectors come from %s of model %s; embedding its %d photos and %d texts again with "
                   "revision %s (an interrupted run resumes where it stopped)", library.root, was, library.model,
                   counts["images"], counts["texts"], current)
    return counts


def rebuild_after_reembed(library: Library, queries: np.ndarray | None = None,
                          marks: dict | None = None) -> list[dict]:
    """Once a re-embedding is done: give each modality the index its size calls for again (back from the exact
    index it searched meanwhile), and retrain an IVF or PQ index, whose centroids the old vectors placed.
    With the re-embedding's watermark (`marks`), the patch-token slots below it, all dead now, give their
    disk space back."""
    if marks and marks.get("images"):
        store = library.patch_store()
        if store.spec is not None and store.release_below(int(marks["images"])):
            logger.info("%s: released the patch-token slots of the %d ids below the re-embedding", library.root,
                        int(marks["images"]))
    done = []
    dim = library.dim
    for modality in MODALITIES:
        index = library.vector_index(modality)
        if not index.ntotal or dim is None:
            continue
        factory = needs_rebuild(index.factory, index.ntotal, dim) or (index.factory if tier(index.factory) >= 2
                                                                      else None)
        if factory:
            done.append(library.rebuild_index(modality, factory, queries=queries))
    return done


def _same_vectors(library: Library, encoder: Encoder, sample: int) -> bool | None:
    """Whether a few stored vectors are what `encoder` makes of their rows now: photos whose file is there
    and unchanged, else texts. None when there is nothing to compare."""
    store, dim = library.store, library.dim
    ids = store.all_image_ids()
    if len(ids) and dim:
        pick = ids[np.unique(np.linspace(0, len(ids) - 1, min(len(ids), 4 * sample)).astype(int))]
        records = {r.path: r for r in store.get_images(pick.tolist()) if os.path.exists(r.path)}
        decoded = [im for im in iter_decoded(list(records), target_size=decode_size(encoder), workers=1,
                                             prepare=input_fit(encoder))
                   if isinstance(im, DecodedImage) and im.sha256 == records[im.path].sha256][:sample]
        if decoded:
            stored = store.get_vectors("images", [records[im.path].id for im in decoded], dim)
            now = encoder.encode_images([im.image for im in decoded])
            return _agree(now, [stored.get(records[im.path].id) for im in decoded])
    ids = store.all_text_ids()
    if len(ids) and dim:
        pick = ids[np.unique(np.linspace(0, len(ids) - 1, min(len(ids), sample)).astype(int))].tolist()
        texts = store.get_texts(pick)
        stored = store.get_vectors("texts", [t.id for t in texts], dim)
        return _agree(encoder.encode_texts([t.text for t in texts]), [stored.get(t.id) for t in texts])
    return None


def _agree(now: np.ndarray, stored: Sequence[np.ndarray | None]) -> bool | None:
    pairs = [(a, b) for a, b in zip(now, stored) if b is not None and a.shape == b.shape]
    if not pairs:
        return None
    cosines = [float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)) for a, b in pairs]
    return bool(np.median(cosines) >= SAME_COSINE)


def reembed_texts(library: Library, encoder: Encoder, ids: Sequence[int], batch_size: int = 256) -> int:
    """Embed the texts of `ids` again from their stored words: each keeps its source and the photo it
    describes, and gets a new id (its token states, when the library keeps them, are written again). Returns
    how many."""
    store = library.store
    keep_states = (library.root / TOKENS_DATA).exists() and hasattr(encoder, "encode_text_states")
    tokens = TextTokenStore(library.root) if keep_states else None
    done = 0
    for start in range(0, len(ids), batch_size):
        by_source = defaultdict(list)
        for text in store.get_texts([int(i) for i in ids[start:start + batch_size]]):
            by_source[text.source].append(text)
        for source, texts in by_source.items():
            words = [t.text for t in texts]
            if tokens is not None:
                vectors, states, mask, _ = encoder.encode_text_states(words)
            else:
                vectors = encoder.encode_texts(words)
            new = library.replace_texts([t.id for t in texts], words, vectors, source, encoder.name,
                                        image_ids=[t.image_id for t in texts])
            if tokens is not None:
                tokens.width = int(states.shape[-1])
                lengths = mask.sum(1).tolist()
                tokens.write(new, words, [np.asarray(st[:n]) for st, n in zip(states, lengths)])
            done += len(texts)
    return done
