"""Recall@K of an encoder on an image-caption dataset (standard protocol, see engine.recall)."""
from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np

from xmodal.engine.eval.datasets import CaptionDataset
from xmodal.indexer.ingest.decode import iter_decoded
from xmodal.indexer.models.base import Encoder, decode_size
from xmodal.indexer.ingest.pipeline import batched
from xmodal.indexer.records import Skipped

from xmodal.engine.eval.recall import recall_report
from xmodal.engine.rerank import DEFAULT_RERANK_K

logger = logging.getLogger(__name__)


class BenchError(Exception):
    pass


def embed_dataset(ds: CaptionDataset, encoder: Encoder, batch_size: int = 16,
                  progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image vectors (n_images, d), caption vectors (n_captions, d)), decoding images in a thread pool."""
    target = decode_size(encoder)
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


def rerank_benchmark(ds: CaptionDataset, encoder, reranker, rerank_ks=(DEFAULT_RERANK_K,),
                     batch_size: int = 16, progress: Callable[[int, int], None] | None = None) -> dict:
    """Recall@1/5/10 of a bundled dual encoder (lite, base) alone and with its top-K reranked by a fusion model
    (its own: `xmodal bench recall --rerank` passes `towers.bundled_reranker(model)`).

    For each caption the dual encoder's top-K images, and for each image its top-K captions, are reordered
    by (dual similarity - hubness prior) + beta * exemplar + alpha * match score (alpha, beta and the hubness
    and exemplar banks from the reranker's checkpoint, alpha and beta chosen on dev; the exemplar term is for
    text -> image only); ranks beyond K keep the dual order.
    {"dual": {t2i, i2t}, "hub": {K: {t2i, i2t}} (hubness correction alone), "exemplar": {K: {t2i, beta}}
    (hubness and exemplar terms, no cross-attention), "rerank": {K: {t2i, i2t, alpha, beta}}}."""
    import torch

    from xmodal.indexer.models.lite_encoder import tokenize
    from xmodal.indexer.models.text_tower import mean_pool

    from xmodal.engine.training.rerank import rerank_eval
    from xmodal.engine.training.rerank_data import TokenCache, token_states

    if not ds.images or not ds.captions:
        raise BenchError(f"dataset {ds.name} has no images or no captions")
    model = getattr(encoder, "model", None)
    if model is None or not hasattr(model, "image_patches"):
        raise BenchError(f"reranking needs the lite model's patch features; model {encoder.name!r} has none")
    t0 = time.perf_counter()
    paths = [str(ds.image_dir / name) for name in ds.images]
    img, patches, done = [], [], 0
    total = len(paths) + len(ds.captions)
    with torch.inference_mode():
        for batch in batched(iter_decoded(paths, target_size=encoder.preprocess.size), batch_size):
            bad = [b for b in batch if isinstance(b, Skipped)]
            if bad:
                raise BenchError(f"benchmark image {bad[0].path} cannot be read: {bad[0].reason}")
            maps = model.image_patches(encoder.preprocess([b.image for b in batch]))  # (B, 1280, H, W)
            img.append(model.embed_pooled_image(model.pool_image(maps)))
            patches.append(reranker.patch_tokens(maps).half())
            done += len(batch)
            if progress:
                progress(done, total)
        states, offsets = token_states(encoder.tokenizer, model.text_tower, list(ds.captions))
        txt, sentences = [], []
        for s in range(0, len(ds.captions), 256):
            ids, mask = tokenize(encoder.tokenizer, ds.captions[s:s + 256])
            pooled = mean_pool(model.text_tower(ids, mask), mask)
            txt.append(model.embed_pooled_text(pooled))
            sentences.append(pooled)
    if progress:
        progress(total, total)
    img, txt = torch.cat(img).numpy(), torch.cat(txt).numpy()
    sim = txt @ img.T
    priors = None if reranker.hub is None else (reranker.hub_prior(img, "t2i"), reranker.hub_prior(txt, "i2t"))
    expansion = None
    if reranker.exemplars is not None and reranker.beta["t2i"]:
        expansion = reranker.exemplar_matrix(torch.cat(sentences).numpy(), img)
    rep = rerank_eval(reranker.model, TokenCache(states, offsets), torch.cat(patches), sim, ds.caption_image,
                      ks=tuple(rerank_ks), alpha=reranker.alpha, priors=priors, expansion=expansion,
                      beta=reranker.beta)
    r2 = lambda d: {k: round(v, 2) for k, v in d.items()}  # noqa: E731
    return {"t2i": r2(rep["dual"]["t2i"]), "i2t": r2(rep["dual"]["i2t"]),
            "rerank": {int(k): {"alpha": v["alpha"], "beta": v["beta"], "t2i": r2(v["t2i"]), "i2t": r2(v["i2t"])}
                       for k, v in rep["K"].items()},
            "hub": {int(k): {"t2i": r2(v["t2i"]), "i2t": r2(v["i2t"])} for k, v in rep.get("hub", {}).items()},
            "exemplar": {int(k): {"beta": v["beta"], "t2i": r2(v["t2i"])} for k, v in rep.get("exemplar", {}).items()},
            "n_images": len(ds.images), "n_texts": len(ds.captions), "model": encoder.name, "dataset": ds.name,
            "seconds": round(time.perf_counter() - t0, 2)}
