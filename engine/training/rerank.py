"""Training of the cross-attention fusion reranker (engine.fusion) on cached features.

Inputs (token-state cache, patch tokens, hard negatives) come from rerank_data.py.

Two architectures (engine.fusion), chosen by `arch`:

* "match" (the default): CrossAttentionMatcher, trained contrastively. Each step takes `batch_size` images,
  one caption each, plus for every caption one hard-negative image from its top dual-encoder images (the
  ALBEF-style mining, from the shipped lite model); symmetric InfoNCE over all pairs of the batch (captions
  against 2 x batch images, images against the batch's captions). Every epoch draws `captions_per_image`
  rounds of one random caption per image.
* "itm": FusionReranker, ALBEF-style image-text matching. Every step takes a batch of captions and makes
  three pairs per caption c of image i: (c, i) positive; (c, i') with i' drawn from c's top dual-encoder
  images except i; (c', i) with c' drawn from i's top dual-encoder captions except i's own. A share
  `hard_fraction` of the negatives are these hard ones, the rest uniformly random pairs (with hard negatives
  only the model stayed at the chance loss for the steps this budget allows). Binary cross-entropy on the
  matching logit. The dual-encoder neighbours come from the shipped lite model, computed once.

Hubness: `prepare` also builds the bank stored with the checkpoint (`hub_bank`) and the dev priors, so that
selection and the dev figures use the same fused score as the engine.

Selection: after each epoch, dev R@1 (t2i + i2t) of the dual encoder's top `select_k` reranked by the
fused score, on a fixed dev subset (first caption of every image for t2i, every image for i2t), with the
best fusion weight alpha from ALPHAS. The fusion weights stored with the checkpoint are then chosen on all of
dev at `fuse_k`, the K searches rerank by default. Reproducible: one seed; deterministic torch kernels.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xmodal.engine.rerank import DEFAULT_RERANK_K
from xmodal.engine.rerank.lite import build_matcher
from xmodal.engine.eval.recall import i2t_ranks, recall_at_k, t2i_ranks
from xmodal.engine.rerank.scoring import fuse, hub_prior, reranked_matrix
from xmodal.engine.training.checkpoint import write_checkpoint
from xmodal.engine.training import TrainingError
from xmodal.engine.training.rerank_data import (HUB_BANK_TEXTS, TokenCache, _sample_tokens, cache_tokens,  # noqa: F401
                                         dual_embeddings, exemplar_bank, expansion_matrix, fit_pca, hub_bank, mine,
                                         score_pairs,
                                         to_patch_tokens, token_states)  # (re-exported)
from xmodal.indexer.models.towers import BUNDLED
from xmodal.indexer.storage.patch_tokens import MAX_SLOT_BYTES
from xmodal.indexer.resources import data_dir, data_file

logger = logging.getLogger(__name__)

DATA_DIR = data_dir()
ALPHAS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
BETAS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)  # weights of the exemplar term (text -> image)


@dataclass
class RerankConfig:
    arch: str = "match"  # "match": CrossAttentionMatcher (contrastive); "itm": FusionReranker (BCE)
    dim: int = 256
    layers: int = 2  # itm only
    heads: int = 4  # itm only
    ffn: int = 256  # itm only
    dropout: float = 0.1  # itm only
    both: bool = True  # match only: add the patches-attend-to-words term
    patch_dim: int = 128  # PCA channels per patch token (0: keep all 1280)
    epochs: int = 2
    batch_size: int = 128  # match: images (one caption each) per step; itm: captions per step (x3 pairs)
    captions_per_image: int = 5  # match: rounds of one random caption per image per epoch; itm: captions
    #                              of each image used per epoch (1..5)
    mine_k: int = 16  # hard negatives drawn from this many dual-encoder neighbours
    hard_fraction: float = 0.5  # itm: share of negatives that are hard (the rest: uniformly random)
    hub: bool = True  # subtract each candidate's hubness prior from the dual similarity (engine.rerank)
    exemplar: bool = True  # t2i: add beta * the candidate's cosine with the query's exemplar expansion (needs hub)
    exemplar_m: int = 5  # nearest train captions per query
    exemplar_tau: float = 0.01  # softmax temperature over their similarities (0.01: nearly the nearest one)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    select_k: int = 16  # the epoch kept: best dev-subset R@1 with the top select_k reranked
    fuse_k: int = DEFAULT_RERANK_K  # the fusion weights alpha and beta: best full-dev R@1 at this K (search's)
    seed: int = 0
    model: str = "lite"  # the bundled model (indexer.models.towers.BUNDLED) whose towers and dual heads it reads
    text_dim: int = 384  # width of the text tower's token states (set by `prepare`: 384 MiniLM, 768 MPNet)
    patches: int = 49  # patch tokens per photo (set by `prepare`: 49 for Lite0's 7x7, 81 for Lite2's 9x9)
    history: list = field(default_factory=list)


# ------------------------------------------------------------------------------------------ scoring

def rerank_eval(model, tokens: TokenCache, patches: torch.Tensor, sim: np.ndarray,
                caption_image: np.ndarray, ks=(16,), alphas=ALPHAS, captions: np.ndarray | None = None,
                alpha: float | dict | None = None, priors: tuple | None = None,
                expansion: np.ndarray | None = None, betas=BETAS, beta: float | dict | None = None) -> dict:
    """Dev figures with the dual encoder's top-K reranked by (dual - hubness prior) + beta * exemplar +
    alpha * match score.

    sim: (n_captions, n_images) dual similarities. `captions` restricts the t2i queries (and the captions
    that images can retrieve) to a subset. priors: (per image (n_images,), per caption (n_captions,)) hubness
    priors (engine.rerank.hub_prior), or None for none. expansion: (n_captions, n_images) cosines of each
    caption's exemplar expansion (engine.rerank.exemplar_expansion) with each image, or None; it enters the
    text -> image direction only. Match scores are computed once for the largest K.
    Returns {"dual": report, "hub": {K: report} with priors and alpha 0 (when priors), "exemplar": {K: report}
    with priors, the chosen beta and alpha 0 (when expansion), "K": {K: {"alpha": {"t2i", "i2t"}, "beta":
    {"t2i", "i2t"}, "t2i", "i2t", "by_alpha"}}}: alpha (and for t2i beta) chosen per K and per direction (the
    best R@1 of that direction; ties: the smaller weights) unless `alpha` / `beta` are given (a float, or one
    per direction)."""
    ci = np.asarray(caption_image)
    prior_img = prior_cap = None
    if priors is not None:
        prior_img, prior_cap = (np.asarray(p, np.float64) for p in priors)
    if captions is not None:
        sim, ci = sim[captions], ci[captions]
        tok_ids = np.asarray(captions)
        prior_cap = prior_cap[captions] if prior_cap is not None else None
        expansion = expansion[captions] if expansion is not None else None
    else:
        tok_ids = np.arange(len(ci))
    kmax = min(max(ks), sim.shape[1], len(ci))  # a K beyond the candidates there are reranks them all
    top_ti = np.argsort(-sim, axis=1, kind="stable")[:, :kmax]  # (n_cap, kmax)
    sim_it = np.ascontiguousarray(sim.T)
    top_it = np.argsort(-sim_it, axis=1, kind="stable")[:, :kmax]  # (n_img, kmax)
    n_cap, n_img = sim.shape
    logit_ti = score_pairs(model, tokens, patches, np.repeat(tok_ids, kmax), top_ti.ravel()).reshape(n_cap, kmax)
    logit_it = score_pairs(model, tokens, patches, tok_ids[top_it.ravel()],
                           np.repeat(np.arange(n_img), kmax)).reshape(n_img, kmax)

    dual_ti, dual_it = np.take_along_axis(sim, top_ti, 1), np.take_along_axis(sim_it, top_it, 1)  # (.., kmax)
    if prior_img is not None:
        dual_ti, dual_it = dual_ti - prior_img[top_ti], dual_it - prior_cap[top_it]
    ex_ti = np.take_along_axis(expansion, top_ti, 1) if expansion is not None else np.zeros_like(dual_ti)

    def t2i(k: int, a: float, b: float = 0.0) -> dict:
        fused = fuse(dual_ti[:, :k] + b * ex_ti[:, :k], logit_ti[:, :k], a)
        return recall_at_k(t2i_ranks(reranked_matrix(sim, top_ti[:, :k], fused), ci))

    def i2t(k: int, a: float) -> dict:
        return recall_at_k(i2t_ranks(reranked_matrix(sim_it, top_it[:, :k], fuse(dual_it[:, :k], logit_it[:, :k], a)), ci))

    out = {"dual": {"t2i": recall_at_k(t2i_ranks(sim, ci)), "i2t": recall_at_k(i2t_ranks(sim_it, ci))}, "K": {}}
    if prior_img is not None:
        out["hub"] = {k: {"t2i": t2i(k, 0.0), "i2t": i2t(k, 0.0)} for k in ks}
    fixed_a = alpha_pair(alpha) if alpha is not None else None
    fixed_b = alpha_pair(beta) if beta is not None else None
    for k in ks:
        a_grid = sorted(set(fixed_a.values())) if fixed_a else alphas
        b_grid = [fixed_b["t2i"]] if fixed_b else (betas if expansion is not None else (0.0,))
        by_ab = {(a, b): t2i(k, a, b) for a in a_grid for b in b_grid}
        by_a_i2t = {a: i2t(k, a) for a in a_grid}
        if fixed_a:
            a_t, a_i = fixed_a["t2i"], fixed_a["i2t"]
            b_t = fixed_b["t2i"] if fixed_b else max(b_grid, key=lambda b: (by_ab[(a_t, b)]["R@1"], -b))
        else:
            a_t, b_t = max(by_ab, key=lambda ab: (by_ab[ab]["R@1"], -ab[0], -ab[1]))
            a_i = max(by_a_i2t, key=lambda a: (by_a_i2t[a]["R@1"], -a))
        out["K"][k] = {"alpha": {"t2i": a_t, "i2t": a_i}, "beta": {"t2i": b_t, "i2t": 0.0},
                       "t2i": by_ab[(a_t, b_t)], "i2t": by_a_i2t[a_i],
                       "by_alpha": {str(a): [by_ab[(a, b_t)]["R@1"] if (a, b_t) in by_ab else None,
                                             by_a_i2t[a]["R@1"]] for a in a_grid}}
        if expansion is not None:
            out.setdefault("exemplar", {})[k] = {"t2i": t2i(k, 0.0, b_t), "beta": b_t}
    return out


def alpha_pair(alpha: float | dict) -> dict:
    """A fusion weight for both directions, or one per direction -> {"t2i": a, "i2t": b}."""
    if isinstance(alpha, dict):
        return {"t2i": float(alpha["t2i"]), "i2t": float(alpha["i2t"])}
    return {"t2i": float(alpha), "i2t": float(alpha)}


def _r1(rep: dict) -> float:
    return rep["t2i"]["R@1"] + rep["i2t"]["R@1"]


# ------------------------------------------------------------------------------------------ training

@dataclass
class RerankData:
    tokens: TokenCache | None  # None: not loaded (train's, in a refit)
    patches: torch.Tensor  # (N_img, 49, Cp) float16
    caption_image: np.ndarray  # (N_cap,)
    neg_img: np.ndarray | None = None  # (N_cap, k) hard-negative images per caption
    neg_cap: np.ndarray | None = None  # (N_img, k) hard-negative captions per image
    sim: np.ndarray | None = None  # (N_cap, N_img) dual similarities (dev only)
    priors: tuple | None = None  # (per image, per caption) hubness priors (dev only; None: no hub correction)
    expansion: np.ndarray | None = None  # (N_cap, N_img) cosines with each caption's exemplar expansion (dev)


def build_fusion(cfg: RerankConfig, patch_dim: int, text_dim: int | None = None):
    """A fresh matcher for `cfg` (seeded), built by the same factory that loads a checkpoint's (rerank.lite)."""
    torch.manual_seed(cfg.seed)
    return build_matcher({**asdict(cfg), "text_dim": text_dim or cfg.text_dim}, patch_dim, dropout=cfg.dropout)


def _epoch_batches(cfg: RerankConfig, ci: np.ndarray, by_image: list, rng: np.random.Generator):
    """One epoch's caption batches. match: rounds of one random caption per image (distinct images within a
    batch); itm: every caption, or `captions_per_image` per image, in random order."""
    if cfg.arch == "match":
        for _ in range(cfg.captions_per_image):
            caps = np.array([c[rng.integers(len(c))] for c in by_image])[rng.permutation(len(by_image))]
            yield from (caps[s:s + cfg.batch_size] for s in range(0, len(caps), cfg.batch_size))
        return
    if cfg.captions_per_image < 5:
        caps = np.concatenate([rng.permutation(c)[:cfg.captions_per_image] for c in by_image])
        order = caps[rng.permutation(len(caps))]
    else:
        order = rng.permutation(len(ci))
    yield from (order[s:s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size))


def _contrastive_loss(model, train: RerankData, c: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """Symmetric InfoNCE: captions c against their images and one hard-negative image each; images against
    the batch's captions."""
    ci = train.caption_image
    i = ci[c]
    ni = train.neg_img[c, rng.integers(0, train.neg_img.shape[1], len(c))]
    imgs = np.concatenate([i, ni])
    st, m = train.tokens.batch(c)
    scores = model.pairwise(st, m, train.patches[imgs].float()) * model.log_scale.exp()  # (B, 2B)
    target = torch.arange(len(c))
    other_positive = torch.from_numpy(i[:, None] == imgs[None, :])  # a hard negative that is another row's
    other_positive[target, target] = False  # image is a negative; only an image equal to the row's own is not
    t2i = F.cross_entropy(scores.masked_fill(other_positive, -1e4), target)
    i2t = F.cross_entropy(scores[:, :len(c)].T, target)
    return (t2i + i2t) / 2


def _itm_loss(model, train: RerankData, c: np.ndarray, rng: np.random.Generator, cfg: RerankConfig) -> torch.Tensor:
    """BCE over (c, i) positives, (c, i') and (c', i) negatives, hard or random."""
    ci = train.caption_image
    n_img = len(train.patches)
    i = ci[c]
    ni = train.neg_img[c, rng.integers(0, train.neg_img.shape[1], len(c))]
    nc = train.neg_cap[i, rng.integers(0, train.neg_cap.shape[1], len(c))]
    easy = rng.random((2, len(c))) >= cfg.hard_fraction
    ri = (i + rng.integers(1, n_img, len(c))) % n_img  # a random other image
    rc = rng.integers(0, len(ci), len(c))
    rc = np.where(ci[rc] == i, (rc + 5) % len(ci), rc)  # a random caption of another image (5 per image)
    ni, nc = np.where(easy[0], ri, ni), np.where(easy[1], rc, nc)
    st, m = train.tokens.batch(np.concatenate([c, c, nc]))
    pt = train.patches[np.concatenate([i, ni, i])].float()
    y = torch.cat([torch.ones(len(c)), torch.zeros(2 * len(c))])
    return F.binary_cross_entropy_with_logits(model(st, m, pt), y)


def train_rerank(train: RerankData, dev: RerankData | None, cfg: RerankConfig,
                 max_steps: int | None = None) -> tuple[dict, dict | None]:
    """Train; keep the best dev epoch (or the last when dev is None). Returns (state, dev report)."""
    torch.use_deterministic_algorithms(True)
    model = build_fusion(cfg, train.patches.shape[-1], train.tokens.states.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    ci = np.asarray(train.caption_image)
    train.caption_image = ci
    n_img = len(train.patches)
    by_image = [np.flatnonzero(ci == i) for i in range(n_img)]
    by_image = [c for c in by_image if len(c)]
    total = cfg.epochs * sum(1 for _ in _epoch_batches(cfg, ci, by_image, np.random.default_rng(0)))
    best, best_rep, step = None, None, 0
    dev_caps = dev_priors = None
    if dev is not None:
        dci = np.asarray(dev.caption_image)
        dev_caps = np.array([np.flatnonzero(dci == i)[0] for i in range(len(dev.patches))])
        dev_priors = dev.priors
    for epoch in range(cfg.epochs):
        model.train()
        t0, losses = time.time(), []
        for c in _epoch_batches(cfg, ci, by_image, rng):
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / total))
            for g in opt.param_groups:
                g["lr"] = lr
            loss = _contrastive_loss(model, train, c, rng) if cfg.arch == "match" else \
                _itm_loss(model, train, c, rng, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if step % 50 == 0:
                logger.debug("step %d loss %.4f", step, np.mean(losses[-50:]))
            if max_steps is not None and step >= max_steps:
                break
        entry = {"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4), "seconds": round(time.time() - t0, 1)}
        rep = None
        if dev is not None:
            rep = rerank_eval(model, dev.tokens, dev.patches, dev.sim, dev.caption_image, ks=(cfg.select_k,),
                              captions=dev_caps, priors=dev_priors, expansion=dev.expansion)
            entry["dev_subset"] = {"dual": rep["dual"], "reranked": {k: v for k, v in rep["K"][cfg.select_k].items()
                                                                      if k != "by_alpha"}}
            entry["eval_seconds"] = round(time.time() - t0 - entry["seconds"], 1)
            logger.info("epoch %d loss %.4f (%.0fs) dev-subset K=%d alpha %s t2i R@1 %.2f->%.2f i2t R@1 %.2f->%.2f",
                        epoch + 1, entry["loss"], entry["seconds"], cfg.select_k, rep["K"][cfg.select_k]["alpha"],
                        rep["dual"]["t2i"]["R@1"], rep["K"][cfg.select_k]["t2i"]["R@1"],
                        rep["dual"]["i2t"]["R@1"], rep["K"][cfg.select_k]["i2t"]["R@1"])
        else:
            logger.info("epoch %d loss %.4f (%.0fs)", epoch + 1, entry["loss"], entry["seconds"])
        cfg.history.append(entry)
        score = _r1(rep["K"][cfg.select_k]) if rep else epoch
        if best is None or score > best[0]:
            best = (score, {k: v.detach().clone() for k, v in model.state_dict().items()}, epoch + 1)
            best_rep = rep
        if max_steps is not None and step >= max_steps:
            break
    logger.info("best epoch %d", best[2])
    return best[1], best_rep


def save_checkpoint(path: Path, state: dict, cfg: RerankConfig, pca: tuple | None, alpha: float, dev: dict,
                    data: str, hub: dict | None = None, beta: dict | None = None) -> None:
    """Format 2 adds config["arch"] and the hubness bank `hub` ({texts, images, tau, and optionally
    exemplars: {keys, scale, images, m, tau}}, or None), and `beta`, the exemplar weight per direction."""
    write_checkpoint(path, "xmodal-lite-rerank/2", state, cfg,
                     pca=None if pca is None else {"mean": pca[0], "proj": pca[1]}, alpha=alpha, dev=dev, data=data,
                     hub=hub, beta=beta or {"t2i": 0.0, "i2t": 0.0})


def fitting_patch_dim(dim: int, patches: int) -> int:
    """The PCA width to store: `dim`, or the largest multiple of 16 whose float16 tokens fit a library's patch
    slot (indexer.storage.patch_tokens.MAX_SLOT_BYTES): 128 fits Lite0's 49 tokens, 96 Lite2's 81."""
    fit = MAX_SLOT_BYTES // (2 * patches) // 16 * 16
    if dim > fit:
        logger.info("patch tokens: %d channels x %d patches exceed the %d-byte slot; storing %d channels",
                    dim, patches, MAX_SLOT_BYTES, fit)
    return min(dim, fit)


def bundled_spec(model: str):
    spec = BUNDLED.get(model)
    if spec is None:
        raise ValueError(f"unknown bundled model {model!r}; choose one of {', '.join(BUNDLED)}")
    return spec


def prepare(data_dir: Path, cache_dir: Path | None, cfg: RerankConfig, pca: tuple | None = None,
            heads: Path | None = None, train_tokens: bool = True,
            patches_of: int | None = None) -> tuple[RerankData, RerankData, tuple, dict | None]:
    """Caches -> train and dev RerankData (patch tokens, token states, neighbours, dev similarities, hubness
    priors and exemplar expansions), the patch PCA (fitted on train unless given) and the hubness bank with
    its exemplars (None without cfg.hub). The towers and dual heads (for mining, the banks and dev's first
    stage) are cfg.model's; `heads` replaces its bundled heads checkpoint, and the photos go in at the size
    the heads' checkpoint names (its preprocessing), as the encoder will index them. train_tokens=False
    leaves train's token states out (None): a refit never reads them, and on a new machine they cost the
    text tower a pass over every train caption (base: about half an hour on 2 cores). patches_of: the patch
    tokens per photo of the matcher being refitted (TrainingError when the heads' size gives another count)."""
    from xmodal.engine.training.align import default_cache_dir, patch_maps
    from xmodal.engine.training.features import build_cache
    from xmodal.engine.eval.datasets import load_captions_csv
    from xmodal.indexer.models.lite_encoder import LiteEncoder

    spec = bundled_spec(cfg.model)
    data_dir = Path(data_dir)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    encoder = LiteEncoder(Path(heads) if heads else data_file(spec.heads), name=spec.name, extra=spec.extra)
    dual, pre = encoder.model, encoder.preprocess  # the heads' own input size, which their checkpoint carries
    out, bank = {}, None
    for split in ("train", "dev"):
        t0 = time.time()
        ds = load_captions_csv(data_dir, data_dir / "splits" / f"{split}.txt")
        ds.name = f"{data_dir.name}-{split}"
        fc = build_cache(ds, cache_dir, pre, towers=(spec.image_tower, spec.text_tower))
        tokens = (cache_tokens(list(ds.captions), ds.name, cache_dir, spec.text_tower)
                  if split == "dev" or train_tokens else None)
        maps = patch_maps(fc.trunk, image_tower=spec.image_tower)  # (N, 1280, H, W) f16
        img, txt = dual_embeddings(dual, maps, fc.text)
        if split == "train" and cfg.patch_dim and pca is None:
            cfg.patch_dim = fitting_patch_dim(cfg.patch_dim, maps.shape[2] * maps.shape[3])
            pca = fit_pca(_sample_tokens(maps, 1500, cfg.seed), cfg.patch_dim, seed=cfg.seed)
        patches = to_patch_tokens(maps, *(pca if pca else (None, None)))
        if patches_of is not None and int(patches.shape[1]) != patches_of:
            raise TrainingError(f"photos at {pre.size} px give {patches.shape[1]} patch tokens, but this reranker was "
                                f"trained on {patches_of}: refit it onto heads whose input size gives the same patch "
                                "grid (the size / 32, rounded up), or train a new reranker on them")
        cfg.patches = int(patches.shape[1])
        if tokens is not None:
            cfg.text_dim = int(tokens.states.shape[1])
        del maps
        d = RerankData(tokens, patches, np.asarray(fc.caption_image, np.int64))
        if split == "train":
            d.neg_img, d.neg_cap = mine(img, txt, d.caption_image, cfg.mine_k)
            bank = hub_bank(dual, img, txt, cfg.seed) if cfg.hub else None
            if bank is not None and cfg.exemplar:
                bank["exemplars"] = exemplar_bank(fc.text, d.caption_image, cfg.exemplar_m, cfg.exemplar_tau)
        else:
            d.sim = (txt @ img.T).numpy()
            if bank is not None:
                d.priors = (hub_prior(img, bank["texts"], bank["tau"]), hub_prior(txt, bank["images"], bank["tau"]))
                if "exemplars" in bank:
                    d.expansion = expansion_matrix(bank, fc.text, img)
        out[split] = d
        logger.info("%s ready: %d images, %d captions (%.0fs)", ds.name, len(patches), len(d.caption_image),
                    time.time() - t0)
    return out["train"], out["dev"], pca, bank


def run_rerank(data_dir: Path, out: Path | None = None, cache_dir: Path | None = None, epochs: int | None = None,
               seed: int = 0, refit: bool = False, model: str = "lite", heads: Path | None = None,
               **overrides) -> dict:
    """`xmodal train rerank`: train on the train split, select on dev, evaluate the best epoch on full dev.

    model: the bundled model whose reranker to train (its towers, its dual heads, or `heads`); out defaults
    to its bundled reranker file. refit: keep the weights (and patch PCA, config, history) of the checkpoint
    at `out`; rebuild its hubness and exemplar banks from train and choose the fusion weights again on dev.
    No training: minutes."""
    t_start = time.time()
    spec = bundled_spec(model)
    out = Path(out) if out else DATA_DIR / (spec.rerank or f"{model}-rerank.pt")  # never into xmodal_base
    pca = state = None
    if refit:
        if not out.exists():
            raise FileNotFoundError(f"--refit keeps the weights of {out}, which does not exist: train it first")
        ck = torch.load(out, map_location="cpu", weights_only=True)
        known = {f for f in RerankConfig.__dataclass_fields__ if f != "history"}
        cfg = RerankConfig(**{k: v for k, v in ck["config"].items() if k in known})
        if cfg.model != model:
            raise TrainingError(f"{out} is {cfg.model}'s reranker; refit it with --model {cfg.model}")
        cfg.history = list(ck.get("history") or [])
        pca = None if ck.get("pca") is None else (ck["pca"]["mean"].float(), ck["pca"]["proj"].float())
        state = {k: v.float() for k, v in ck["state"].items()}
    else:
        cfg = RerankConfig(seed=seed, model=model, **overrides)
        if epochs is not None:
            cfg.epochs = epochs
    train, dev, pca, bank = prepare(data_dir, cache_dir, cfg, pca=pca, heads=heads, train_tokens=not refit,
                                    patches_of=cfg.patches if refit else None)
    t_train = time.time()
    if not refit:
        state, _ = train_rerank(train, dev, cfg)
    train_seconds = time.time() - t_train
    model = build_fusion(cfg, train.patches.shape[-1])
    model.load_state_dict(state)
    full = rerank_eval(model, dev.tokens, dev.patches, dev.sim, dev.caption_image,
                       ks=tuple(sorted({8, 16, 32, cfg.fuse_k})), priors=dev.priors, expansion=dev.expansion)
    alpha, beta = full["K"][cfg.fuse_k]["alpha"], full["K"][cfg.fuse_k]["beta"]
    save_checkpoint(out, state, cfg, pca, alpha, full, data=f"{Path(data_dir).name}: train split "
                    f"({len(train.patches)} images), selected on dev ({len(dev.patches)} images)", hub=bank, beta=beta)
    return {"out": str(out), "alpha": alpha, "beta": beta, "dev": full, "history": cfg.history, "refit": refit,
            "train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - t_start, 1),
            "config": {k: v for k, v in asdict(cfg).items() if k != "history"}}
