"""Recall@K for image-caption retrieval benchmarks (Flickr8k/30k, COCO), the standard protocol.

* text -> image (t2i): every caption queries all images; a hit at K if its own image is in the top K.
* image -> text (i2t): every image queries all captions; a hit at K if ANY of its captions is in the top K.

Ranks are 0-based: rank 0 means first place, and "hit at K" is ``rank < K``.

Ties are resolved pessimistically: an item that scores exactly as high as the ground truth is counted as
ranked above it. So a constant similarity matrix scores 0 rather than 100, and a model cannot gain from
collapsed embeddings. Ground-truth captions of the same image never count against each other (i2t takes
the best of them). NaN similarities are rejected.

All functions work in row chunks of ``CHUNK_ELEMENTS`` cells, so a 25,000 x 5,000 matrix needs no extra
full-size temporaries.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

CHUNK_ELEMENTS = 1 << 20  # ~1M cells per chunk: a few MB of temporaries


def _row_chunks(n_rows: int, n_cols: int) -> Iterable[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


def _check(sim: np.ndarray, caption_image: np.ndarray, captions_axis: int) -> tuple[np.ndarray, np.ndarray]:
    sim = np.asarray(sim)
    caption_image = np.asarray(caption_image)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be a 2-D matrix, got shape {sim.shape}")
    if caption_image.ndim != 1 or not np.issubdtype(caption_image.dtype, np.integer):
        raise ValueError(
            f"caption_image must be a 1-D integer array, got shape {caption_image.shape} {caption_image.dtype}"
        )
    n_captions, n_images = sim.shape[captions_axis], sim.shape[1 - captions_axis]
    if len(caption_image) != n_captions:
        raise ValueError(f"caption_image has {len(caption_image)} entries but the matrix has {n_captions} captions")
    if len(caption_image) and (caption_image.min() < 0 or caption_image.max() >= n_images):
        raise ValueError(f"caption_image values must index the {n_images} images, got range "
                         f"[{caption_image.min()}, {caption_image.max()}]")
    return sim, caption_image.astype(np.int64, copy=False)


def _no_nan(block: np.ndarray, start: int) -> None:
    if np.isnan(block).any():
        row = start + int(np.flatnonzero(np.isnan(block).any(axis=1))[0])
        raise ValueError(f"similarity row {row} contains NaN; check the embeddings")


def t2i_ranks(sim: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """0-based rank of each caption's image among all images.

    ``sim`` is (n_captions, n_images); ``caption_image[c]`` is the index of caption ``c``'s image. The rank
    is the number of other images scoring at least as high as the right one (ties count against).
    """
    sim, caption_image = _check(sim, caption_image, captions_axis=0)
    n_captions, n_images = sim.shape
    ranks = np.empty(n_captions, dtype=np.int64)
    for start, stop in _row_chunks(n_captions, n_images):
        block = sim[start:stop]
        _no_nan(block, start)
        truth = block[np.arange(stop - start), caption_image[start:stop]]
        ranks[start:stop] = (block >= truth[:, None]).sum(axis=1) - 1
    return ranks


def i2t_ranks(sim_it: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """0-based rank of each image's best caption among all captions.

    ``sim_it`` is (n_images, n_captions). The rank is the number of captions of *other* images scoring at
    least as high as the image's best-scoring own caption (ties count against). Every image needs at least
    one caption.
    """
    sim_it, caption_image = _check(sim_it, caption_image, captions_axis=1)
    n_images, n_captions = sim_it.shape
    per_image = np.bincount(caption_image, minlength=n_images)
    if n_images and per_image.min() == 0:
        raise ValueError(f"image {int(np.argmin(per_image))} has no caption; i2t recall needs one per image")
    order = np.argsort(caption_image, kind="stable")  # caption ids grouped by image
    offsets = np.concatenate([[0], np.cumsum(per_image)])
    ranks = np.empty(n_images, dtype=np.int64)
    for start, stop in _row_chunks(n_images, n_captions):
        block = sim_it[start:stop]
        _no_nan(block, start)
        own = order[offsets[start] : offsets[stop]]
        owner = caption_image[own] - start
        own_scores = block[owner, own]
        best = np.full(stop - start, -np.inf, dtype=np.float64)
        np.maximum.at(best, owner, own_scores)
        own_at_best = np.bincount(owner, weights=own_scores >= best[owner], minlength=stop - start)
        ranks[start:stop] = (block >= best[:, None].astype(block.dtype)).sum(axis=1) - own_at_best.astype(np.int64)
    return ranks


def recall_at_k(ranks: np.ndarray, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """Percentage of queries whose rank is below each K: ``{"R@1": 57.3, "R@5": ..., ...}``."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no ranks to compute recall from")
    out = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"K must be >= 1, got {k}")
        out[f"R@{k}"] = float(100.0 * np.mean(ranks < k))
    return out


def recall_report(sim_ti: np.ndarray, caption_image: np.ndarray, ks: Iterable[int] = (1, 5, 10)) -> dict:
    """Both directions from one (n_captions, n_images) similarity matrix:
    ``{"t2i": {"R@1": ...}, "i2t": {...}, "n_images": ..., "n_texts": ...}``."""
    ks = tuple(ks)
    sim_ti = np.asarray(sim_ti)
    return {
        "t2i": recall_at_k(t2i_ranks(sim_ti, caption_image), ks),
        "i2t": recall_at_k(i2t_ranks(sim_ti.T, caption_image), ks),
        "n_images": int(sim_ti.shape[1]),
        "n_texts": int(sim_ti.shape[0]),
    }
