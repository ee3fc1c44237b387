"""Cache locked-tower features of an image-caption dataset so head training takes minutes.

Images: the image tower's trunk map (N, 320, 7, 7) float16 for EfficientNet-Lite0 at 224 pixels ((N, 352, 9, 9)
for Lite2 at 280) -- cheap to store; the locked head conv turns it into the 1280-channel patch map at training
time. Texts: the text tower's mean-pooled sentence embedding (N, 384) float32 for MiniLM ((N, 768) for MPNet).
Each part is keyed by a hash of exactly what it depends on (the towers by name: `indexer.models.towers`).
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
from xmodal.indexer.models.lite_encoder import tokenize
from xmodal.indexer.models.towers import load_image_tower, load_text_tower
from xmodal.indexer.models.text_tower import TextTower, mean_pool
from xmodal.indexer.ingest.pipeline import batched
from xmodal.indexer.records import Skipped

logger = logging.getLogger(__name__)
CACHE_VERSION = 2


@dataclass
class FeatureCache:
    images: list[str]
    trunk: np.ndarray  # (N_img, 320, 7, 7) float16 (Lite0 at 224)
    text: np.ndarray  # (N_cap, 384) float32 (MiniLM)
    caption_image: np.ndarray  # (N_cap,) int64


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps([CACHE_VERSION, *parts], default=str).encode()).hexdigest()[:16]


LITE_TOWERS = ("efficientnet-lite0", "all-minilm-l6-v2")


def build_cache(ds: CaptionDataset, cache_dir: Path, pre: Preprocess = Preprocess(),
                batch_size: int = 32, towers: tuple[str, str] = LITE_TOWERS) -> FeatureCache:
    """Compute (or reuse) the cached features of `ds` under cache_dir, for the (image, text) `towers`."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    image_tower, text_tower = towers
    img_tag = () if image_tower == LITE_TOWERS[0] else (image_tower,)  # the lite model's keys stay as they were
    txt_tag = () if text_tower == LITE_TOWERS[1] else (text_tower,)
    trunk_file = cache_dir / f"trunk-{ds.name}-{_key('trunk', *img_tag, repr(pre), ds.images)}.npy"
    text_file = cache_dir / f"text-{ds.name}-{_key('text', *txt_tag, ds.captions)}.npy"
    if not trunk_file.exists():
        _cache_images(ds, trunk_file, pre, batch_size, image_tower)
    if not text_file.exists():
        _cache_texts(ds, text_file, text_tower)
    return FeatureCache(list(ds.images), np.load(trunk_file, mmap_mode="r"), np.load(text_file),
                        np.asarray(ds.caption_image, np.int64))


@torch.inference_mode()
def _cache_images(ds: CaptionDataset, out_file: Path, pre: Preprocess, batch_size: int,
                  image_tower: str = LITE_TOWERS[0]) -> None:
    model = load_image_tower(image_tower).to(memory_format=torch.channels_last)
    side = -(-pre.size // 32)
    tmp = out_file.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, "w+", np.float16, (len(ds.images), model.trunk_width, side, side))
    paths = [str(ds.image_dir / name) for name in ds.images]
    start = 0
    for batch in batched(iter_decoded(paths, target_size=pre.size), batch_size):
        bad = [b for b in batch if isinstance(b, Skipped)]
        if bad:
            raise RuntimeError(f"cannot read dataset image {bad[0].path}: {bad[0].reason}")
        pixels = pre([b.image for b in batch]).contiguous(memory_format=torch.channels_last)
        out[start:start + len(batch)] = model.forward_trunk(pixels).contiguous().numpy()
        start += len(batch)
        if start % 1024 < batch_size:
            logger.info("image features %d/%d", start, len(paths))
    out.flush()
    del out
    tmp.rename(out_file)


@torch.inference_mode()
def _cache_texts(ds: CaptionDataset, out_file: Path, text_tower: str = LITE_TOWERS[1], batch_size: int = 256) -> None:
    tokenizer, bert = load_text_tower(text_tower)
    tower = TextTower(bert)
    order = np.argsort([len(c) for c in ds.captions], kind="stable")  # similar lengths together: less padding
    out = np.zeros((len(ds.captions), tower.width), np.float32)
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        ids, mask = tokenize(tokenizer, [ds.captions[i] for i in rows])
        out[rows] = mean_pool(tower(ids, mask), mask).numpy()
        if (s // batch_size) % 20 == 0:
            logger.info("text features %d/%d", s + len(rows), len(order))
    np.save(out_file, out)
