"""Distillation targets for the lite dual encoder's alignment (engine/training/align.py, `distill_weight`):
the bundled reranker's view of each train caption's top-k dual-encoder images.

Teacher score of (caption, image) = the shipped dual encoder's cosine + alpha_t2i * the cross-attention matcher's
score: the reranker's fusion (engine/rerank/lite.py) without its hubness and exemplar terms (the exemplar bank
holds the train captions themselves). Candidates: each caption's top-k images by the shipped dual encoder
(its own photo included when it is there). The teacher's temperature is fitted on dev only: the one that
minimises the negative log-likelihood of each dev caption's own photo among its k candidates.

Caveat: the matcher was trained on these train pairs, so its train scores can be more confident than on dev;
`teacher_targets` logs both splits' top-1 agreement with the true photo.

Loss: KL(teacher softmax || student softmax) over the k candidates (`kl_to_teacher`), the student's logits being
its own scaled cosines with the candidates (whole-map pooled, no crop).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

TAUS = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3)


def kl_to_teacher(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """(B, K) student logits, (B, K) teacher logits (already divided by its temperature) ->
    mean over rows of KL(softmax(teacher) || softmax(student)); 0 when the two softmaxes agree."""
    return F.kl_div(F.log_softmax(student, dim=1), F.log_softmax(teacher, dim=1), log_target=True,
                    reduction="batchmean")


def own_nll(scores: np.ndarray, images: np.ndarray, caption_image: np.ndarray, tau: float) -> float:
    """Mean -log softmax(scores / tau) of each row's own photo, over the rows whose candidates include it."""
    hit = images == np.asarray(caption_image)[:, None]
    rows = hit.any(1)
    z = torch.log_softmax(torch.from_numpy(scores[rows] / tau), dim=1)
    return float(-(z[torch.from_numpy(hit[rows])]).mean())


def fit_tau(scores: np.ndarray, images: np.ndarray, caption_image: np.ndarray, taus=TAUS) -> float:
    """The teacher temperature with the lowest own-photo NLL (call it on dev only)."""
    return min(taus, key=lambda t: own_nll(scores, images, caption_image, t))


@dataclass
class DistillTargets:
    images: torch.Tensor  # (N_cap, K) int64 candidate photos
    logits: torch.Tensor  # (N_cap, K) float32 teacher scores / tau

    def loss(self, model, member: int, scale: torch.Tensor, zt: torch.Tensor, caps: np.ndarray,
             pooled: torch.Tensor, captions: int) -> torch.Tensor:
        """KL term of the batch's first `captions` captions (their unit text vectors: zt's first rows)."""
        sel = torch.from_numpy(np.asarray(caps[:captions]))
        cand = self.images[sel]  # (m, K)
        zc = model.embed_pooled_image(pooled[cand.reshape(-1)], member).view(*cand.shape, -1)
        student = scale * torch.einsum("md,mkd->mk", zt[:len(sel)], zc)
        return kl_to_teacher(student, self.logits[sel])


@torch.inference_mode()
def _teacher_scores(reranker, lite, maps: torch.Tensor, pooled_text: np.ndarray, tokens, k: int,
                    batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(candidates (N_cap, k), teacher scores (N_cap, k)) = top-k by the dual encoder, cosine + alpha * match."""
    from xmodal.engine.training.rerank_data import dual_embeddings, score_pairs

    img, txt = dual_embeddings(lite, maps, pooled_text)
    sims, cands = [], []
    for s in range(0, len(txt), 2000):
        v, i = (txt[s:s + 2000] @ img.T).topk(k, dim=1)
        sims.append(v)
        cands.append(i)
    sim, cand = torch.cat(sims).numpy(), torch.cat(cands).numpy()
    patches = torch.cat([reranker.patch_tokens(maps[s:s + 500]) for s in range(0, len(maps), 500)])
    match = score_pairs(reranker.model, tokens, patches, np.repeat(np.arange(len(txt)), k), cand.reshape(-1),
                        batch).reshape(cand.shape)
    return cand.astype(np.int64), (sim + reranker.alpha["t2i"] * match).astype(np.float32)


def _cached_scores(name: str, captions: list[str], fc, maps, k: int, cache_dir: Path, reranker, lite):
    from xmodal.engine.training.rerank_data import cache_tokens
    from xmodal.indexer.models.lite_encoder import LITE_HEADS

    stamp = [(str(p), os.path.getsize(p)) for p in (reranker.checkpoint, LITE_HEADS)]
    key = hashlib.sha256(json.dumps(["distill", 1, k, stamp, captions, list(fc.images)]).encode()).hexdigest()[:16]
    f = Path(cache_dir) / f"distill-{name}-{key}.npz"
    if not f.exists():
        t0 = time.time()
        tokens = cache_tokens(captions, name, cache_dir)
        cand, scores = _teacher_scores(reranker, lite, maps, fc.text, tokens, k)
        tmp = f.with_suffix(".tmp.npz")
        np.savez(tmp, images=cand, scores=scores)
        os.replace(tmp, f)
        logger.info("teacher scores of %s: %d x %d pairs in %.0fs", name, *cand.shape, time.time() - t0)
    z = np.load(f)
    return z["images"], z["scores"]


def teacher_targets(train, dev, train_maps: torch.Tensor, dev_maps: torch.Tensor, k: int, cache_dir: Path,
                    tau: float = 0.0) -> tuple[DistillTargets, dict]:
    """train / dev: (dataset name, captions, FeatureCache). -> the train targets and a report (tau fitted on dev
    unless given; each split's own-photo NLL and the teacher's top-1 accuracy among the candidates)."""
    from xmodal.engine.rerank.lite import Reranker
    from xmodal.indexer.models.lite_encoder import LiteEncoder

    reranker, lite = Reranker(), LiteEncoder().model
    out = {}
    for (name, captions, fc), maps in ((train, train_maps), (dev, dev_maps)):
        out[name] = (*_cached_scores(name, list(captions), fc, maps, k, cache_dir, reranker, lite),
                     np.asarray(fc.caption_image))
    dev_images, dev_scores, dev_ci = out[dev[0]]
    tau = tau or fit_tau(dev_scores, dev_images, dev_ci)
    report = {"tau": tau}
    for name, (images, scores, ci) in out.items():
        top = images[np.arange(len(images)), scores.argmax(1)] == ci
        report[name] = {"nll": round(own_nll(scores, images, ci, tau), 4), "top1": round(float(top.mean()) * 100, 2),
                        "dual_top1": round(float((images[:, 0] == ci).mean()) * 100, 2)}
    logger.info("distillation teacher: %s", report)
    images, scores, _ = out[train[0]]
    return DistillTargets(torch.from_numpy(images), torch.from_numpy(scores / tau)), report
