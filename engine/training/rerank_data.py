"""Inputs of reranker training (engine/training/rerank.py), cached or derived from engine/training/features.py:

* `TokenCache`: the text tower's final token states of every caption, flat float16 (sum of lengths, C) with
  offsets (N_cap + 1,), C = 384 for MiniLM (lite), 768 for MPNet (base); only real tokens ([CLS] ... [SEP])
  are stored, so no padding is kept on disk;
* patch tokens: 1280-channel patch maps (7x7 for Lite0 at 224 px, 9x9 for Lite2 at 280) -> 49 or 81 tokens
  reduced by a whitened PCA fitted on train patches (`fit_pca`, `to_patch_tokens`);
* hard negatives: each caption's top dual-encoder images and each image's top captions, own ones excluded
  (`mine`);
* `score_pairs`: a matcher's scores of (caption, image) pairs from these inputs;
* the banks that travel with the checkpoint: the hubness bank (`hub_bank`) and the exemplar bank
  (`exemplar_bank`), and dev's exemplar cosines as the engine computes them (`expansion_matrix`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xmodal.engine.rerank.scoring import exemplar_expansion, pack_keys, unpack_keys
from xmodal.engine.training import TrainingError

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ token cache

@dataclass
class TokenCache:
    states: np.ndarray  # (sum T_i, C) float16
    offsets: np.ndarray  # (N + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def batch(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption indices -> (B, T, C) float32 padded states and (B, T) 0/1 mask."""
        idx = np.asarray(idx)
        lens = self.offsets[idx + 1] - self.offsets[idx]
        t = int(lens.max())
        out = np.zeros((len(idx), t, self.states.shape[1]), np.float32)
        mask = np.zeros((len(idx), t), np.int64)
        for r, (i, n) in enumerate(zip(idx, lens)):
            out[r, :n] = self.states[self.offsets[i]:self.offsets[i] + n]
            mask[r, :n] = 1
        return torch.from_numpy(out), torch.from_numpy(mask)


@torch.inference_mode()
def token_states(tokenizer, tower, texts, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> flat (sum T, C) float16 final token states of real tokens, offsets (N + 1,), in `texts`'
    order. Batches hold texts of similar length (sorted by characters), so little padding is computed."""
    from xmodal.indexer.models.lite_encoder import tokenize

    order = np.argsort([len(t) for t in texts], kind="stable")
    rows: list = [None] * len(texts)
    for s in range(0, len(order), batch_size):
        pick = order[s:s + batch_size]
        ids, mask = tokenize(tokenizer, [texts[i] for i in pick])
        states = tower(ids, mask)  # (B, T, C)
        for i, row, m in zip(pick, states, mask):
            rows[i] = row[:int(m.sum())].half().numpy()
        if (s // batch_size) % 20 == 0:
            logger.info("token states %d/%d", s + len(pick), len(order))
    lens = [len(r) for r in rows]
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return np.concatenate(rows) if rows else np.zeros((0, tower.width), np.float16), offsets


def cache_tokens(captions: list[str], name: str, cache_dir: Path, text_tower: str = "all-minilm-l6-v2") -> TokenCache:
    """The named text tower's token states of `captions`, cached under cache_dir (keyed by the captions, and
    by the tower unless it is MiniLM, whose keys stay as they were)."""
    from xmodal.indexer.models.text_tower import TextTower
    from xmodal.indexer.models.towers import load_text_tower

    tag = [] if text_tower == "all-minilm-l6-v2" else [text_tower]
    key = hashlib.sha256(json.dumps(["tokens", 1, *tag, captions]).encode()).hexdigest()[:16]
    f = Path(cache_dir) / f"tokens-{name}-{key}.npz"
    if not f.exists():
        t0 = time.time()
        tokenizer, bert = load_text_tower(text_tower)
        states, offsets = token_states(tokenizer, TextTower(bert), captions)
        tmp = f.with_suffix(".tmp.npz")
        np.savez(tmp, states=states, offsets=offsets)
        os.replace(tmp, f)
        logger.info("token states of %d captions cached in %.0fs", len(captions), time.time() - t0)
    z = np.load(f)
    return TokenCache(z["states"], z["offsets"])


@torch.inference_mode()
def score_pairs(model, tokens: TokenCache, patches: torch.Tensor, caps: np.ndarray,
                imgs: np.ndarray, batch: int = 512) -> np.ndarray:
    """ITM logits of (caption caps[j], image imgs[j]) pairs."""
    model.eval()
    out = []
    for s in range(0, len(caps), batch):
        st, m = tokens.batch(caps[s:s + batch])
        out.append(model(st, m, patches[imgs[s:s + batch]].float()).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


# ------------------------------------------------------------------------------------------ patch tokens

def fit_pca(tokens: torch.Tensor, dim: int, sample: int = 60000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, C) patch tokens -> (mean (C,), projection (C, dim)): whitened PCA (unit variance outputs)."""
    g = torch.Generator().manual_seed(seed)
    x = tokens[torch.randperm(len(tokens), generator=g)[:sample]].double()
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / max(1, len(x) - 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0)[:dim], evecs.flip(1)[:, :dim]
    sign = torch.sign(evecs[evecs.abs().argmax(0), torch.arange(dim)])  # deterministic signs
    proj = evecs * sign / evals.clamp(min=1e-8).sqrt()
    return mean.float(), proj.float()


def _sample_tokens(maps: torch.Tensor, images: int, seed: int) -> torch.Tensor:
    """(N, C, H, W) maps -> (M * H * W, C) float32 patch tokens of at most `images` seeded random images."""
    if len(maps) > images:
        maps = maps[torch.from_numpy(np.random.default_rng(seed).choice(len(maps), images, replace=False))]
    return maps.float().flatten(2).transpose(1, 2).reshape(-1, maps.shape[1])


def to_patch_tokens(maps: torch.Tensor, mean: torch.Tensor | None, proj: torch.Tensor | None,
                    batch: int = 500) -> torch.Tensor:
    """(N, 1280, H, W) patch maps -> (N, H * W, Cp) float16 tokens (row-major patches), PCA-reduced if given."""
    out = []
    for s in range(0, len(maps), batch):
        t = maps[s:s + batch].float().flatten(2).transpose(1, 2)  # (B, H*W, 1280)
        if proj is not None:
            t = (t - mean) @ proj  # (B, H*W, Cp)
        out.append(t.half())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------ mining

def topk_neighbours(sim_fn, n_rows: int, k: int, exclude, chunk: int = 1000) -> np.ndarray:
    """(n_rows, k') column indices of each row's top-k by sim_fn(rows) -> (B, n_cols), excluding
    exclude(rows) -> boolean (B, n_cols). k' = k, or fewer where a row has fewer columns left than k (a
    small dataset): an excluded column is never returned. TrainingError when some row has none left."""
    starts = range(0, n_rows, chunk)
    if not starts:
        return np.zeros((0, k), np.int64)
    masks = (exclude(np.arange(s, min(n_rows, s + chunk))) for s in starts)  # boolean only: cheap, one chunk at a time
    left = min(int(m.shape[1] - m.sum(axis=1).max(initial=0)) for m in masks)
    if left < 1:
        raise TrainingError("no neighbour left to mine: every candidate is excluded for some row; the train "
                            "split needs at least two photos")
    out = []
    for s in starts:
        rows = np.arange(s, min(n_rows, s + chunk))
        sim = sim_fn(rows).clone()
        sim[torch.from_numpy(exclude(rows))] = -math.inf
        out.append(sim.topk(min(k, left), dim=1).indices.numpy())
    return np.concatenate(out)


@torch.inference_mode()
def dual_embeddings(model, maps: torch.Tensor, pooled_text: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Dual encoder embeddings (images (N, D), captions (M, D)) from patch maps and pooled text."""
    img = torch.cat([model.embed_pooled_image(model.pool_image(maps[s:s + 500]))
                     for s in range(0, len(maps), 500)])
    txt = model.embed_pooled_text(torch.from_numpy(np.asarray(pooled_text, np.float32)))
    return img, txt


def hard_images(img: torch.Tensor, txt: torch.Tensor, caption_image: np.ndarray, k: int) -> np.ndarray:
    """(N_cap, k) each caption's top-k images by dual similarity, its own photo excluded."""
    ci = np.asarray(caption_image)
    return topk_neighbours(lambda r: txt[r] @ img.T, len(txt), k, lambda r: np.arange(len(img))[None] == ci[r][:, None])


def mine(img: torch.Tensor, txt: torch.Tensor, caption_image: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hard negatives: (captions' top-k images except their own, images' top-k captions except their own)."""
    ci = np.asarray(caption_image)
    neg_cap = topk_neighbours(lambda r: img[r] @ txt.T, len(img), k, lambda r: ci[None] == r[:, None])
    return hard_images(img, txt, ci, k), neg_cap


# ------------------------------------------------------------------------------------------ banks

HUB_BANK_TEXTS = 10_000  # train captions in the hubness bank (as good as all 30,000 on dev, a third the size)


def hub_bank(lite, img: torch.Tensor, txt: torch.Tensor, seed: int, texts: int = HUB_BANK_TEXTS) -> dict:
    """The hubness bank from the train split's dual embeddings: `texts` seeded random captions (the
    queries images are normalised against), all images (for texts), float16, and the dual encoder's own
    temperature 1 / exp(logit_scale)."""
    pick = np.sort(np.random.default_rng(seed).permutation(len(txt))[:texts])
    tau = float(1.0 / lite.logit_scale.detach().float().exp().mean())
    return {"texts": txt[torch.from_numpy(pick)].half(), "images": img.half(), "tau": tau}


def exemplar_bank(pooled_text: np.ndarray, caption_image: np.ndarray, m: int, tau: float) -> dict:
    """The exemplar bank: every train caption's sentence vector (the text tower's mean-pooled token states) (unit, int8 with per-row scales) and
    the index of its photo in the hubness bank's images (all train photos, in order)."""
    keys = torch.nn.functional.normalize(torch.as_tensor(np.asarray(pooled_text, np.float32)), dim=1)
    q, scale = pack_keys(keys)  # numpy; a checkpoint holds tensors (weights_only torch.load refuses arrays)
    return {"keys": torch.from_numpy(q), "scale": torch.from_numpy(scale),
            "images": torch.as_tensor(np.asarray(caption_image, np.int32)),
            "m": int(m), "tau": float(tau)}


def expansion_matrix(bank: dict, pooled_text: np.ndarray, img: torch.Tensor) -> np.ndarray:
    """Captions' sentence vectors (N_cap, C) and images' dual vectors (N_img, D) -> (N_cap, N_img)
    cosines of each caption's exemplar expansion with each image, as the engine computes them at query time."""
    ex = bank["exemplars"]
    q = torch.nn.functional.normalize(torch.as_tensor(np.asarray(pooled_text, np.float32)), dim=1).numpy()
    e = exemplar_expansion(q, unpack_keys(ex["keys"], ex["scale"]), bank["images"].float().numpy(),
                           ex["images"].long().numpy(), m=ex["m"], tau=ex["tau"])
    return e @ np.asarray(img, np.float32).T
