"""Cache locked-tower features of an image-caption dataset so head training takes minutes.

Images: the EfficientNet-Lite0 trunk map (N, 320, 7, 7) float16 -- the input of the trainable head conv.
Texts: MiniLM token states entering the trainable top layer(s), stored flat (total_tokens, 384) float16
with offsets, so padding costs nothing on disk.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from indexer.datasets import CaptionDataset
from indexer.decode import iter_decoded
from indexer.encoders import Preprocess, load_efficientnet_lite0, load_minilm, tokenize
from indexer.models.text_tower import TextTower
from indexer.records import Skipped

logger = logging.getLogger(__name__)
CACHE_VERSION = 1


@dataclass
class FeatureCache:
    images: list[str]
    trunk: np.ndarray  # (N_img, 320, 7, 7) float16
    text_states: np.ndarray  # (total_tokens, C) float16
    text_offsets: np.ndarray  # (N_cap + 1,) int64
    caption_image: np.ndarray  # (N_cap,) int64

    def text_batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded (B, T, C) float32 states and (B, T) mask for captions idx."""
        lens = self.text_offsets[idx + 1] - self.text_offsets[idx]
        t = int(lens.max())
        out = np.zeros((len(idx), t, self.text_states.shape[1]), np.float32)
        mask = np.zeros((len(idx), t), np.int64)
        for row, (i, n) in enumerate(zip(idx, lens)):
            out[row, :n] = self.text_states[self.text_offsets[i]: self.text_offsets[i] + n]
            mask[row, :n] = 1
        return torch.from_numpy(out), torch.from_numpy(mask)


def _key(ds: CaptionDataset, split: int, pre: Preprocess) -> str:
    h = hashlib.sha256(json.dumps([CACHE_VERSION, split, repr(pre), ds.images, ds.captions]).encode())
    return h.hexdigest()[:16]


def build_cache(ds: CaptionDataset, cache_dir: Path, split: int = 5, pre: Preprocess = Preprocess(),
                batch_size: int = 32) -> FeatureCache:
    """Compute (or reuse) the cached features of `ds` under cache_dir."""
    folder = Path(cache_dir) / f"{ds.name}-{_key(ds, split, pre)}"
    done = folder / "done.json"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        _cache_images(ds, folder, pre, batch_size)
        _cache_texts(ds, folder, split)
        np.save(folder / "caption_image.npy", ds.caption_image.astype(np.int64))
        done.write_text(json.dumps({"images": len(ds.images), "captions": len(ds.captions)}))
    return FeatureCache(
        images=list(ds.images),
        trunk=np.load(folder / "trunk.npy", mmap_mode="r"),
        text_states=np.load(folder / "text_states.npy", mmap_mode="r"),
        text_offsets=np.load(folder / "text_offsets.npy"),
        caption_image=np.load(folder / "caption_image.npy"),
    )


@torch.inference_mode()
def _cache_images(ds: CaptionDataset, folder: Path, pre: Preprocess, batch_size: int) -> None:
    model = load_efficientnet_lite0()
    out = np.lib.format.open_memmap(folder / "trunk.tmp.npy", "w+", np.float16, (len(ds.images), 320, 7, 7))
    paths = [str(ds.image_dir / name) for name in ds.images]
    batch, start = [], 0
    for i, item in enumerate(iter_decoded(paths, target_size=pre.size)):
        if isinstance(item, Skipped):
            raise RuntimeError(f"cannot read dataset image {item.path}: {item.reason}")
        batch.append(item.image)
        if len(batch) == batch_size or i == len(paths) - 1:
            out[start:start + len(batch)] = model.forward_trunk(pre(batch)).numpy().astype(np.float16)
            start += len(batch)
            batch = []
            if start % 1024 < batch_size:
                logger.info("image features %d/%d", start, len(paths))
    out.flush()
    del out
    (folder / "trunk.tmp.npy").rename(folder / "trunk.npy")


@torch.inference_mode()
def _cache_texts(ds: CaptionDataset, folder: Path, split: int, batch_size: int = 256) -> None:
    tokenizer, bert = load_minilm()
    tower = TextTower(bert, split)
    chunks, offsets = [], [0]
    for s in range(0, len(ds.captions), batch_size):
        ids, mask = tokenize(tokenizer, ds.captions[s:s + batch_size])
        h = tower.forward_bottom(ids, mask)
        for row in range(len(ids)):
            n = int(mask[row].sum())
            chunks.append(h[row, :n].numpy().astype(np.float16))
            offsets.append(offsets[-1] + n)
    np.save(folder / "text_states.npy", np.concatenate(chunks))
    np.save(folder / "text_offsets.npy", np.asarray(offsets, np.int64))
