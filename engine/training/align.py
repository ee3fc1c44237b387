"""LiT-style alignment of the lite dual encoder: both towers locked, trained heads, symmetric InfoNCE
with a learned temperature, on cached features (engine.training.features).

Augmentation: each training step mean-pools a random sub-window (at least `crop` x `crop` of the 7x7
patch map) of every image, the feature-space analogue of random-resized-crop. Every caption of every
image is used each epoch; an image drawn twice in a batch makes both pairs positives.

Reproducible: one seed fixes initialisation, dropout, windows and batch order; torch runs deterministic
CPU kernels. Model selection uses the dev split only (the epoch with the best t2i + i2t R@1).
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from xmodal.engine.eval.recall import recall_report
from xmodal.engine.training.checkpoint import write_checkpoint
from xmodal.engine.training.features import FeatureCache, build_cache
from xmodal.engine.training.head_tuning import TunedHead, tuned_maps, tuned_pooled
from xmodal.engine.training.hard_negatives import (HardNegativeBatches, ImageGroupBatches, contrastive_loss,
                                                  mine_caption_images)
from xmodal.indexer.models.base import Preprocess
from xmodal.indexer.models.lite import LiteDualEncoder, TextHead, gem_pool
from xmodal.indexer.models.text_tower import TextTower
from xmodal.indexer.models.towers import BUNDLED, IMAGE_TOWERS, load_image_tower, load_text_tower
from xmodal.indexer.resources import data_dir as shipped_data_dir

logger = logging.getLogger(__name__)

# Each bundled model's recipe: AlignConfig values that differ from the defaults (lite's), applied by run_align
# before the caller's overrides, so `xmodal train align --model M --seed S` reproduces M's shipped heads.
# base: HN-NCE (beta 0.5) lifts its 280-px heads by +0.88 / +1.26 dual R@1 over three seeds, and GeM pooling of
# the patch map (p = 3, run by the encoder too) image -> text by more again (data/MODEL_CARD.md).
RECIPES = {"lite": {}, "base": {"hn_beta": 0.5, "pool_p": 3.0}}


@dataclass
class AlignConfig:
    dim: int = 512
    hidden: int = 4096
    dropout: float = 0.5
    crop: int = 4  # smallest pooling window side (of 7)
    epochs: int = 12
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    members: int = 1  # independently trained heads, averaged (see indexer.models.lite)
    text_hidden: int = 1024  # 0: linear text head; else an MLP of this width
    text_dropout: float = 0.1
    seed: int = 0
    image_tower: str = "efficientnet-lite0"  # indexer.models.towers names
    text_tower: str = "all-minilm-l6-v2"
    size: int = 224  # input pixels
    # levers, all off by default (the shipped recipe): engine/training/hard_negatives.py, distill.py
    hn_beta: float = 0.0  # HN-NCE reweighting of negatives (Radenovic et al. 2023); 0 = plain InfoNCE
    hn_share: float = 0.0  # share of each batch filled with captions of seed captions' mined hard images
    hn_k: int = 8  # those images: each caption's top-k by the shipped lite model
    pool_p: float = 1.0  # generalised-mean pooling of the patch map (1: the mean; base's recipe: 3; the encoder runs it too)
    text_pool: str = "mean"  # "mean+max": mean and max of the token states, concatenated (trial only)
    extra_text_tower: str = ""  # a second text tower whose sentence features are concatenated (trial only)
    text_adapter: int = 0  # > 0: a residual per-token MLP of this width on the locked token states (trial only)
    tune_head: float = 0.0  # > 0: the image tower's head conv trains too, at lr x this (trial only, head_tuning.py)
    tune_head_sp: float = 0.0  # its L2-SP pull toward the ImageNet weights
    group_images: int = 0  # > 0: batches of this many photos with all their captions (ImageGroupBatches)
    distill_weight: float = 0.0  # KL toward the reranker's softmax over each caption's top-k candidates
    distill_k: int = 16
    distill_tau: float = 0.0  # the teacher's temperature (its scores / tau); 0: fitted on dev (distill.py)
    distill_captions: int = 64  # captions of each batch that get the KL term (cost: k image heads each)
    distill_report: dict = field(default_factory=dict)
    history: list = field(default_factory=list)


def patch_maps(trunk: np.ndarray, batch: int = 250, image_tower: str = "efficientnet-lite0") -> torch.Tensor:
    """(N, 320, 7, 7) cached trunk -> (N, 1280, 7, 7) float16 patch maps through the locked head conv."""
    tower = load_image_tower(image_tower)
    with torch.inference_mode():
        return torch.cat([tower.forward_head(torch.from_numpy(np.asarray(trunk[s:s + batch], np.float32))).half()
                          for s in range(0, len(trunk), batch)])


def random_window_pool(maps: torch.Tensor, min_side: int, rng: np.random.Generator, p: float = 1.0) -> torch.Tensor:
    """(B, C, H, W) -> (B, C): mean over a random window per row, sides uniform in [min_side, H or W]
    (p != 1: the generalised mean, (mean x^p)^(1/p), of the non-negative maps)."""
    b, _, h, w = maps.shape
    hs, ws = rng.integers(min_side, h + 1, b), rng.integers(min_side, w + 1, b)
    y0 = (rng.random(b) * (h - hs + 1)).astype(int)
    x0 = (rng.random(b) * (w - ws + 1)).astype(int)
    ys, xs = np.arange(h), np.arange(w)
    my = (ys[None] >= y0[:, None]) & (ys[None] < (y0 + hs)[:, None])
    mx = (xs[None] >= x0[:, None]) & (xs[None] < (x0 + ws)[:, None])
    mask = torch.from_numpy((my[:, :, None] & mx[:, None, :]).astype(np.float32))  # (B, H, W)
    x = maps.float() if p == 1 else maps.float().clamp(min=1e-6) ** p
    pooled = torch.einsum("bchw,bhw->bc", x, mask) / mask.sum((1, 2))[:, None]
    return pooled if p == 1 else pooled ** (1 / p)


def build_model(cfg: AlignConfig) -> LiteDualEncoder:
    torch.manual_seed(cfg.seed)
    _, bert = load_text_tower(cfg.text_tower)
    model = LiteDualEncoder(TextTower(bert), dim=cfg.dim, hidden=cfg.hidden, dropout=cfg.dropout,
                            members=cfg.members, text_hidden=cfg.text_hidden, text_dropout=cfg.text_dropout,
                            image_variant=IMAGE_TOWERS[cfg.image_tower].variant, pool_p=cfg.pool_p)
    model.image_tower.load_state_dict(load_image_tower(cfg.image_tower).state_dict())
    return model


HEAD_KEYS = ("image_heads.", "text_heads.", "logit_scale", "text_adapters.", "tuned_heads.")


def head_state(model: LiteDualEncoder) -> dict[str, torch.Tensor]:
    """Exactly what training changes (what the checkpoint stores)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(HEAD_KEYS)}


@torch.no_grad()
def evaluate(model: LiteDualEncoder, dev_pooled: torch.Tensor, dev: FeatureCache, member: int | None = None) -> dict:
    model.eval()
    img = model.embed_pooled_image(dev_pooled, member)
    adapted = getattr(dev, "tokens", None) is not None and hasattr(model, "text_adapters")
    txt = model.embed_pooled_text(adapted_text(model, dev.tokens, np.arange(len(dev.caption_image)), member)
                                  if adapted else torch.from_numpy(dev.text), member)
    return recall_report((txt @ img.T).numpy(), dev.caption_image)


class TokenAdapter(torch.nn.Module):
    """(B, T, C) token states -> (B, T, C): x + up(gelu(down(layernorm(x)))) per token; `up` starts at zero, so
    training starts from plain mean pooling (a trial of a trainable text side on the locked tower)."""

    def __init__(self, width: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.down = torch.nn.Linear(width, hidden)
        self.up = torch.nn.Linear(hidden, width)
        self.drop = torch.nn.Dropout(dropout)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.drop(torch.nn.functional.gelu(self.down(self.norm(x)))))


def adapted_text(model: LiteDualEncoder, tokens, caps: np.ndarray, member: int | None, batch: int = 1024) -> torch.Tensor:
    """Captions' token states through the member's adapter, mean-pooled over real tokens -> (B, C)."""
    adapter = model.text_adapters[member or 0]
    out = []
    for s in range(0, len(caps), batch):
        st, m = tokens.batch(np.asarray(caps[s:s + batch]))
        m = m.float()[..., None]
        out.append((adapter(st) * m).sum(1) / m.sum(1).clamp(min=1))
    return torch.cat(out)


def _r1(report: dict) -> float:
    return report["t2i"]["R@1"] + report["i2t"]["R@1"]


def train_align(train: FeatureCache, dev: FeatureCache, cfg: AlignConfig, distill_from: tuple | None = None
                ) -> tuple[dict, dict]:
    """Train every ensemble member, each keeping its best dev epoch; return (head state, ensemble dev report).
    distill_from (only with cfg.distill_weight): ((train name, captions), (dev name, captions), cache dir)."""
    torch.use_deterministic_algorithms(True)
    model = build_model(cfg)
    if train.text.shape[1] != model.text_tower.width:  # a trial (text_pool, extra_text_tower): wider text features
        model.text_heads = torch.nn.ModuleList(TextHead(train.text.shape[1], cfg.dim, cfg.text_hidden, cfg.text_dropout)
                                               for _ in range(cfg.members))
    if cfg.text_adapter:
        model.text_adapters = torch.nn.ModuleList(TokenAdapter(model.text_tower.width, cfg.text_adapter,
                                                                cfg.text_dropout) for _ in range(cfg.members))
    if cfg.tune_head:
        if cfg.members != 1:
            raise ValueError("tune_head (a trial) trains one member: use members=1")
        model.tuned_heads = torch.nn.ModuleList(TunedHead(model.image_tower) for _ in range(cfg.members))
    for p in model.parameters():
        p.requires_grad_(False)
    maps = patch_maps(train.trunk, image_tower=cfg.image_tower)  # (N, 1280, 7, 7)
    dev_maps = patch_maps(dev.trunk, image_tower=cfg.image_tower)
    dev_pooled = gem_pool(dev_maps, cfg.pool_p)
    pooled = gem_pool(maps, cfg.pool_p)
    for head in model.image_heads:
        head.mean.copy_(pooled.mean(0))
        head.std.copy_(pooled.std(0) + 1e-6)
    hn = (HardNegativeBatches(mine_caption_images(maps, train.text, train.caption_image, cfg.hn_k),
                              train.caption_image, cfg.hn_share) if cfg.hn_share > 0 else None)
    teacher = None
    if cfg.distill_weight > 0:
        if distill_from is None:
            raise ValueError("distill_weight > 0 needs distill_from: the splits' names and captions, the cache dir")
        from xmodal.engine.training.distill import teacher_targets
        (tn, tc), (dn, dc), cache_dir = distill_from
        teacher, cfg.distill_report = teacher_targets((tn, tc, train), (dn, dc, dev), maps, dev_maps, cfg.distill_k,
                                                      cache_dir, cfg.distill_tau)
        cfg.distill_tau = cfg.distill_report["tau"]
    for member in range(cfg.members):
        _train_member(model, member, maps, train, dev_pooled, dev, cfg, hn, teacher, pooled)
    report = evaluate(model, tuned_pooled(model.tuned_heads[0], dev.trunk) if cfg.tune_head else dev_pooled, dev)
    logger.info("ensemble of %d: dev t2i R@1 %.2f i2t R@1 %.2f", cfg.members, report["t2i"]["R@1"],
                report["i2t"]["R@1"])
    return head_state(model), report


def _train_member(model: LiteDualEncoder, member: int, maps: torch.Tensor, train: FeatureCache,
                  dev_pooled: torch.Tensor, dev: FeatureCache, cfg: AlignConfig, hn: HardNegativeBatches | None = None,
                  teacher=None, pooled: torch.Tensor | None = None) -> None:
    """Train one (image head, text head) pair in place; restore its best dev epoch at the end. `hn`: hard
    negative batches; `teacher`: distillation targets (engine/training/distill.py), `pooled` the train images'
    whole-map pooled features the distillation candidates are embedded from."""
    torch.manual_seed(cfg.seed * 1000 + member)
    image_head, text_head = model.image_heads[member], model.text_heads[member]
    params = [p for n, p in image_head.named_parameters()] + list(text_head.parameters())
    adapter = model.text_adapters[member] if cfg.text_adapter else None
    if adapter is not None:
        params += list(adapter.parameters())
    tuned = model.tuned_heads[member] if cfg.tune_head else None
    param_groups = [{"params": params}, {"params": [model.logit_scale], "weight_decay": 0.0}]
    if tuned is not None:  # no decay toward zero: the L2-SP penalty pulls toward the ImageNet weights instead
        param_groups.append({"params": tuned.trainable(), "weight_decay": 0.0, "lr_scale": cfg.tune_head})
    for p in params + [model.logit_scale] + (tuned.trainable() if tuned is not None else []):
        p.requires_grad_(True)
    opt = torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng([cfg.seed, member])
    text = torch.from_numpy(train.text)
    caption_image = torch.from_numpy(train.caption_image)
    n = len(caption_image)
    groups = ImageGroupBatches(train.caption_image, cfg.group_images) if cfg.group_images > 0 else None
    per_epoch = math.ceil(len(train.images) / cfg.group_images) if groups is not None else math.ceil(n / cfg.batch_size)
    total = cfg.epochs * per_epoch
    best, best_report, step = None, None, 0
    for epoch in range(cfg.epochs):
        image_head.train()
        text_head.train()
        if adapter is not None:
            adapter.train()
        if tuned is not None:
            tuned.train()
        t0, losses = time.time(), []
        order = rng.permutation(n)
        batches = (hn.epoch(cfg.batch_size, rng) if hn is not None else groups.epoch(rng) if groups is not None else
                   (order[s:s + cfg.batch_size] for s in range(0, n, cfg.batch_size)))
        for caps in batches:
            imgs = caption_image[caps]
            if groups is not None:  # one row per photo (each once), its captions all in the batch
                imgs, cap_row = torch.unique(imgs, return_inverse=True)
            else:
                cap_row = torch.arange(len(caps))
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / total))
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            batch_maps = tuned_maps(tuned, train.trunk, imgs.numpy()) if tuned is not None else maps[imgs]
            zi = model.embed_pooled_image(random_window_pool(batch_maps, cfg.crop, rng, cfg.pool_p), member)
            zt = model.embed_pooled_text(adapted_text(model, train.tokens, caps, member) if adapter is not None
                                         else text[caps], member)
            scale = model.logit_scale[member].exp().clamp(max=100)
            logits = scale * zt @ zi.T  # (B, B)
            same = (imgs[cap_row][:, None] == imgs[None, :]).float()  # (captions, image rows)
            loss = contrastive_loss(logits, same, cfg.hn_beta)
            if tuned is not None and cfg.tune_head_sp:
                loss = loss + cfg.tune_head_sp * tuned.sp_penalty()
            if teacher is not None:
                loss = loss + cfg.distill_weight * teacher.loss(model, member, scale, zt, caps, pooled,
                                                                 cfg.distill_captions)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
        report = evaluate(model, tuned_pooled(tuned, dev.trunk) if tuned is not None else dev_pooled, dev, member)
        entry = {"member": member, "epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4), "dev": report,
                 "seconds": round(time.time() - t0, 1),
                 "temperature": round(1 / model.logit_scale[member].exp().item(), 4)}
        cfg.history.append(entry)
        logger.info("member %d epoch %d loss %.3f dev t2i R@1 %.2f i2t R@1 %.2f (%.0fs)", member, epoch + 1,
                    entry["loss"], report["t2i"]["R@1"], report["i2t"]["R@1"], entry["seconds"])
        if best_report is None or _r1(report) > _r1(best_report):
            best, best_report = head_state(model), report
            best_epoch = epoch + 1
    model.load_state_dict(best, strict=False)  # this member's best epoch (other members are unchanged)
    for p in params + [model.logit_scale] + (tuned.trainable() if tuned is not None else []):
        p.requires_grad_(False)
    logger.info("member %d: best dev epoch %d", member, best_epoch)


def max_pooled(states: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Flat (sum T_i, C) token states and (N + 1,) offsets (every text at least one token) -> (N, C) float32
    per-text maximum over its tokens."""
    return np.maximum.reduceat(np.asarray(states, np.float32), np.asarray(offsets[:-1], np.int64), axis=0)


def _max_pooled_text(caches: dict, captions: dict, cache_dir: Path, cfg: AlignConfig) -> None:
    """text_pool "mean+max" (a trial): each split's text features become [mean, max] of the text tower's final
    token states (the reranker's token cache, engine.training.rerank_data)."""
    from xmodal.engine.training.rerank_data import cache_tokens

    if cfg.text_pool != "mean+max":
        raise ValueError(f"unknown text_pool {cfg.text_pool!r}; use 'mean' or 'mean+max'")
    for split, cache in caches.items():
        name, caps = captions[split]
        tokens = cache_tokens(caps, name, cache_dir, cfg.text_tower)
        cache.text = np.concatenate([cache.text, max_pooled(tokens.states, tokens.offsets)], axis=1)


def save_checkpoint(path: Path, state: dict, cfg: AlignConfig, report: dict, data: str) -> None:
    """Head weights (float16: half the size, dev recall unchanged) + config + preprocessing + dev figures."""
    write_checkpoint(path, "xmodal-lite-align/1", state, cfg, preprocess=asdict(Preprocess(size=cfg.size)), dev=report,
                     data=data)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xmodal" / "features"


def run_align(data_dir: Path, out: Path | None = None, cache_dir: Path | None = None, epochs: int | None = None,
              seed: int = 0, model: str = "lite", **overrides) -> dict:
    """`xmodal train align`: cache features of the train and dev splits, train, keep the best dev epoch.
    `model`: the bundled model whose heads to train ("lite" or "base": its towers and input size)."""
    from xmodal.engine.eval.datasets import load_captions_csv

    spec = BUNDLED.get(model)
    if spec is None:
        raise ValueError(f"unknown bundled model {model!r}; choose one of {', '.join(BUNDLED)}")
    overrides = {"image_tower": spec.image_tower, "text_tower": spec.text_tower, "size": spec.size,
                 **RECIPES.get(model, {}), **overrides}
    data_dir = Path(data_dir)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    caches, captions, datasets = {}, {}, {}
    for split in ("train", "dev"):
        ds = datasets[split] = load_captions_csv(data_dir, data_dir / "splits" / f"{split}.txt")
        ds.name = f"{data_dir.name}-{split}"
        logger.info("%s: %d images, %d captions", ds.name, len(ds.images), len(ds.captions))
        caches[split] = build_cache(ds, cache_dir, Preprocess(size=overrides["size"]),
                                    towers=(overrides["image_tower"], overrides["text_tower"]))
        captions[split] = (ds.name, list(ds.captions))
    cfg = AlignConfig(seed=seed, **overrides)
    if cfg.text_pool != "mean":
        _max_pooled_text(caches, captions, cache_dir, cfg)
    for split, ds in datasets.items() if cfg.text_adapter else ():  # a trial: token states, not pooled features
        from xmodal.engine.training.rerank_data import cache_tokens
        caches[split].tokens = cache_tokens(list(ds.captions), ds.name, cache_dir, cfg.text_tower)
    for split, ds in datasets.items() if cfg.extra_text_tower else ():  # a trial: two text towers' features
        extra = build_cache(ds, cache_dir, Preprocess(size=cfg.size), towers=(cfg.image_tower, cfg.extra_text_tower))
        caches[split].text = np.concatenate([caches[split].text, extra.text], axis=1)
    if epochs is not None:
        cfg.epochs = epochs
    distill_from = (captions["train"], captions["dev"], cache_dir) if cfg.distill_weight > 0 else None
    state, report = train_align(caches["train"], caches["dev"], cfg, distill_from)
    out = Path(out) if out else shipped_data_dir() / spec.heads  # data/ in a checkout; never into xmodal_base
    save_checkpoint(out, state, cfg, report, data=f"{data_dir.name}: train split ({len(caches['train'].images)} "
                    f"images), selected on dev ({len(caches['dev'].images)} images)")
    best_epochs = [max((h for h in cfg.history if h["member"] == m), key=lambda h: _r1(h["dev"]))["epoch"]
                   for m in range(cfg.members)]
    return {"out": str(out), "epochs": best_epochs, "dev": report, "history": cfg.history,
            "config": {k: v for k, v in asdict(cfg).items() if k != "history"}}
