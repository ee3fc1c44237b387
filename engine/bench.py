"""Recall@K of an encoder on an image-caption dataset (standard protocol, see engine.recall)."""
from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np

from indexer.datasets import CaptionDataset
from indexer.decode import iter_decoded
from indexer.encoders import Encoder
from indexer.pipeline import batched
from indexer.records import Skipped

from .recall import recall_report

logger = logging.getLogger(__name__)


class BenchError(Exception):
    pass


def embed_dataset(ds: CaptionDataset, encoder: Encoder, batch_size: int = 16,
                  progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image vectors (n_images, d), caption vectors (n_captions, d)), decoding images in a thread pool."""
    target = getattr(getattr(encoder, "preprocess", None), "size", 224)
    paths = [str(ds.image_dir / name) for name in ds.images]
    image_vecs, done = [], 0
    for batch in batched(iter_decoded(paths, target_size=target), batch_size):
        bad = [b for b in batch if isinstance(b, Skipped)]
        if bad:
            raise BenchError(f"benchmark image {bad[0].path} cannot be read: {bad[0].reason}")
        image_vecs.append(encoder.encode_images([b.image for b in batch]))
        done += len(batch)
        if progress:
            progress(done, len(paths) + len(ds.captions))
    text_vecs = []
    for batch in batched(ds.captions, 256):
        text_vecs.append(encoder.encode_texts(batch))
        done += len(batch)
        if progress:
            progress(done, len(paths) + len(ds.captions))
    return np.concatenate(image_vecs), np.concatenate(text_vecs)


def recall_benchmark(ds: CaptionDataset, encoder: Encoder, ks=(1, 5, 10),
                     progress: Callable[[int, int], None] | None = None) -> dict:
    """{"t2i": {"R@1":...}, "i2t": {...}, "n_images", "n_texts", "model", "dataset", "seconds"}."""
    if not ds.images or not ds.captions:
        raise BenchError(f"dataset {ds.name} has no images or no captions")
    t0 = time.perf_counter()
    img, txt = embed_dataset(ds, encoder, progress=progress)
    report = recall_report(txt @ img.T, ds.caption_image, ks)
    for direction in ("t2i", "i2t"):  # percentages to 2 decimals for people and JSON
        report[direction] = {k: round(v, 2) for k, v in report[direction].items()}
    report.update(model=encoder.name, dataset=ds.name, seconds=round(time.perf_counter() - t0, 2))
    return report
