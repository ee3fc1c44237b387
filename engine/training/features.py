"""Cache locked-tower features of an image-caption dataset so head training takes minutes.

Images: the EfficientNet-Lite0 trunk map (N, 320, 7, 7) float16 -- cheap to store; the locked head conv
turns it into the 1280-channel patch map at training time. Texts: MiniLM's mean-pooled sentence
embedding (N, 384) float32. Each part is keyed by a hash of exactly what it depends on.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xmodal.engine.eval.datasets import CaptionDataset
from xmodal.indexer.ingest.decode import iter_decoded
from xmodal.indexer.models.base import Preprocess
from xmodal.indexer.models.lite_encoder import load_efficientnet_lite0, load_minilm, tokenize
from xmodal.indexer.models.text_tower import TextTower, mean_pool
from xmodal.indexer.ingest.pipeline import batched
from xmodal.indexer.records import Skipped

logger = logging.getLogger(__name__)
CACHE_VERSION = 2


@dataclass
class FeatureCache:
    images: list[str]
    trunk: np.ndarray  # (N_img, 320, 7, 7) float16
    text: np.ndarray  # (N_cap, 384) float32
    caption_image: np.ndarray  # (N_cap,) int64


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps([CACHE_VERSION, *parts], default=str).encode()).hexdigest()[:16]


def build_cache(ds: CaptionDataset, cache_dir: Path, pre: Preprocess = Preprocess(),
                batch_size: int = 32) -> FeatureCache:
    """Compute (or reuse) the cached features of `ds` under cache_dir."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    trunk_file = cache_dir / f"trunk-{ds.name}-{_key('trunk', repr(pre), ds.images)}.npy"
    text_file = cache_dir / f"text-{ds.name}-{_key('text', ds.captions)}.npy"
    if not trunk_file.exists():
        _cache_images(ds, trunk_file, pre, batch_size)
    if not text_file.exists():
        _cache_texts(ds, text_file)
    return FeatureCache(list(ds.images), np.load(trunk_file, mmap_mode="r"), np.load(text_file),
                        np.asarray(ds.caption_image, np.int64))


@torch.inference_mode()
def _cache_images(ds: CaptionDataset, out_file: Path, pre: Preprocess, batch_size: int) -> None:
    model = load_efficientnet_lite0()
    tmp = out_file.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, "w+", np.float16, (len(ds.images), 320, 7, 7))
    paths = [str(ds.image_dir / name) for name in ds.images]
    start = 0
    for batch in batched(iter_decoded(paths, target_size=pre.size), batch_size):
        bad = [b for b in batch if isinstance(b, Skipped)]
        if bad:
            raise RuntimeError(f"cannot read dataset image {bad[0].path}: {bad[0].reason}")
        out[start:start + len(batch)] = model.forward_trunk(pre([b.image for b in batch])).numpy()
        start += len(batch)
        if start % 1024 < batch_size:
            logger.info("image features %d/%d", start, len(paths))
    out.flush()
    del out
    tmp.rename(out_file)


@torch.inference_mode()
def _cache_texts(ds: CaptionDataset, out_file: Path, batch_size: int = 256) -> None:
    tokenizer, bert = load_minilm()
    tower = TextTower(bert)
    out = []
    for batch in batched(ds.captions, batch_size):
        ids, mask = tokenize(tokenizer, batch)
        out.append(mean_pool(tower(ids, mask), mask).numpy())
    np.save(out_file, np.concatenate(out).astype(np.float32))
