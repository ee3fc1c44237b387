"""Hard negatives for the lite dual encoder's alignment (engine/training/align.py), both off by default:

* `contrastive_loss` with `beta > 0`: the HN-NCE reweighting of Radenovic et al. 2023 ("Filtering, distillation
  and hard negatives for vision-language pre-training"). Each negative's term in the InfoNCE denominator is
  weighted by w_ij = n_neg * softmax_j(beta * logit_ij) over the row's negatives (weights detached, mean 1), so
  negatives the model already scores high count more; beta = 0 is plain InfoNCE. Positives (every pair whose
  images are the same photo: `same`) keep weight 1 and the soft target of the plain loss.
* `HardNegativeBatches`: batches composed so hard negatives share a batch -- a share of seed captions, plus for
  each one a caption of one of its top dual-encoder images (mined once with the shipped lite model,
  `mine_caption_images`), its own photo excluded.
* `ImageGroupBatches`: batches of images, each with all of its captions (every caption of a photo in the same
  batch: the image -> text side sees its five positives against the other photos' captions at once).
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def hn_weighted_logits(logits: torch.Tensor, same: torch.Tensor, beta: float) -> torch.Tensor:
    """(B, B) logits, (B, B) 0/1 positives -> logits + log w on negatives (HN-NCE; unchanged when beta = 0).
    Rows with no negative are returned as they are."""
    if beta == 0:
        return logits
    neg = same == 0
    n_neg = neg.sum(1, keepdim=True).clamp(min=1)
    scaled = (beta * logits.detach()).masked_fill(~neg, -math.inf)
    log_w = torch.log_softmax(scaled, dim=1) + torch.log(n_neg.float())  # log(n_neg * softmax): mean weight 1
    log_w = torch.where(neg, log_w, torch.zeros_like(log_w))
    return logits + log_w


def contrastive_loss(logits: torch.Tensor, same: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
    """Symmetric InfoNCE of (Bt, Bi) text x image logits with multi-positive soft targets (`same`: 0/1, text i
    is a caption of image j; square when every caption brings its own image row, as in plain batches),
    HN-NCE-reweighted when beta > 0."""
    t2i = F.cross_entropy(hn_weighted_logits(logits, same, beta), same / same.sum(1, keepdim=True))
    i2t = F.cross_entropy(hn_weighted_logits(logits.T, same.T, beta), same.T / same.T.sum(1, keepdim=True))
    return (t2i + i2t) / 2


@torch.inference_mode()
def mine_caption_images(maps: torch.Tensor, pooled_text: np.ndarray, caption_image: np.ndarray,
                        k: int) -> np.ndarray:
    """(N_cap, k) each train caption's top-k images by the shipped lite dual encoder (own photo excluded)."""
    from xmodal.engine.training.rerank_data import dual_embeddings, hard_images
    from xmodal.indexer.models.lite_encoder import LiteEncoder

    img, txt = dual_embeddings(LiteEncoder().model, maps, pooled_text)
    return hard_images(img, txt, caption_image, k)


class HardNegativeBatches:
    """An epoch's batches of caption indices, as many as plain batching makes (same compute per epoch):
    `1 - share` of each batch is seed captions (the first part of a fresh permutation); for each seed, a random
    caption of a random one of its mined images fills the rest. share = 0.5: half seeds, half their hard
    negatives (so an epoch seeds half the captions; the others come in as negatives)."""

    def __init__(self, neg_img: np.ndarray, caption_image: np.ndarray, share: float):
        if not 0 < share < 1:
            raise ValueError("share must be in (0, 1)")
        self.neg_img, self.share = np.asarray(neg_img), share
        ci = np.asarray(caption_image)
        order = np.argsort(ci, kind="stable")
        starts = np.searchsorted(ci[order], np.arange(ci.max() + 2))
        self.by_image = [order[starts[i]:starts[i + 1]] for i in range(ci.max() + 1)]

    def epoch(self, batch_size: int, rng: np.random.Generator):
        n = len(self.neg_img)
        seeds = max(1, int(round(batch_size * (1 - self.share))))
        order = rng.permutation(n)
        for step in range(math.ceil(n / batch_size)):
            caps = order[(step * seeds) % n:][:seeds]
            picks = self.neg_img[caps, rng.integers(0, self.neg_img.shape[1], len(caps))]
            extra = np.array([self.by_image[i][rng.integers(len(self.by_image[i]))] for i in picks], np.int64)
            yield np.concatenate([caps, extra[:batch_size - len(caps)]])


class ImageGroupBatches:
    """An epoch's batches of `images` distinct photos (a fresh permutation), each batch yielded as the caption
    indices of all their captions: (captions, image of each caption)."""

    def __init__(self, caption_image: np.ndarray, images: int):
        if images < 2:
            raise ValueError("a batch needs at least 2 images")
        self.images = images
        ci = np.asarray(caption_image)
        order = np.argsort(ci, kind="stable")
        starts = np.searchsorted(ci[order], np.arange(ci.max() + 2))
        self.by_image = [order[starts[i]:starts[i + 1]] for i in range(ci.max() + 1)]

    def epoch(self, rng: np.random.Generator):
        order = rng.permutation(len(self.by_image))
        for s in range(0, len(order), self.images):
            yield np.concatenate([self.by_image[i] for i in order[s:s + self.images]])
