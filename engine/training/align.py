"""LiT-style alignment of the lite dual encoder: towers locked (up to their top layers), trained heads,
symmetric InfoNCE with a learned temperature, on cached features (engine.training.features).

Reproducible: one seed fixes initialisation, caption sampling and batch order; torch runs deterministic
CPU kernels. Model selection is on the dev split only (the best epoch's dev R@1 sum).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.recall import recall_report
from engine.training.features import FeatureCache
from indexer.encoders import Preprocess, load_minilm
from indexer.models.lite import LiteDualEncoder
from indexer.models.text_tower import TextTower

logger = logging.getLogger(__name__)


@dataclass
class AlignConfig:
    dim: int = 256
    text_split: int = 5  # BERT layers from here on are fine-tuned (6 = text tower fully locked)
    epochs: int = 20
    batch_size: int = 256
    lr_head: float = 1e-3
    lr_tower: float = 5e-5
    weight_decay: float = 0.05
    warmup_steps: int = 100
    captions_per_image: int = 1  # captions drawn per image per epoch (all five are seen over epochs)
    seed: int = 0
    history: list = field(default_factory=list)


def trainable_state(model: LiteDualEncoder, cfg: AlignConfig) -> dict[str, torch.Tensor]:
    """Exactly the parameters and buffers that training changes (what the checkpoint stores)."""
    keep = ("image_head.", "text_head.", "logit_scale")
    tower = tuple(f"text_tower.bert.encoder.layer.{i}." for i in range(cfg.text_split, 64))
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(keep + tower)}


def build_model(cfg: AlignConfig) -> LiteDualEncoder:
    """A fresh model: pretrained towers, heads initialised from cfg.seed."""
    from indexer.encoders import load_efficientnet_lite0

    torch.manual_seed(cfg.seed)
    _, bert = load_minilm()
    model = LiteDualEncoder(TextTower(bert, cfg.text_split), dim=cfg.dim)
    base = load_efficientnet_lite0()
    model.image_tower.load_state_dict(base.state_dict())
    model.image_head._conv_head.load_state_dict(base._conv_head.state_dict())
    model.image_head._bn1.load_state_dict(base._bn1.state_dict())
    return model


@torch.no_grad()
def embed_cache(model: LiteDualEncoder, cache: FeatureCache, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(image vectors, caption vectors) of a cached split, unit norm float32."""
    model.eval()
    img = [model.encode_image_trunk(torch.from_numpy(np.asarray(cache.trunk[s:s + batch], np.float32)))
           for s in range(0, len(cache.images), batch)]
    n_cap = len(cache.caption_image)
    txt = []
    for s in range(0, n_cap, batch):
        states, mask = cache.text_batch(np.arange(s, min(s + batch, n_cap)))
        txt.append(model.encode_text_states(states, mask))
    return torch.cat(img).numpy(), torch.cat(txt).numpy()


def evaluate(model: LiteDualEncoder, cache: FeatureCache) -> dict:
    img, txt = embed_cache(model, cache)
    return recall_report(txt @ img.T, cache.caption_image)


def _set_train_mode(model: LiteDualEncoder) -> None:
    model.train()
    model.image_tower.eval()
    model.image_head._bn1.eval()  # batch statistics of cached features stay ImageNet's
    model.text_tower.eval()  # dropout off in the tuned BERT layers: cached states are deterministic
    for layer in model.text_tower.bert.encoder.layer[model.text_tower.split:]:
        layer.train()


def train_align(train: FeatureCache, dev: FeatureCache, cfg: AlignConfig) -> tuple[dict, dict]:
    """Train; return (state of the best epoch on dev, its dev report)."""
    torch.use_deterministic_algorithms(True)
    model = build_model(cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    state_keys = set(trainable_state(model, cfg))
    params = dict(model.named_parameters())
    tower = [p for k, p in params.items() if k in state_keys and k.startswith("text_tower.")]
    conv = [p for k, p in params.items() if k.startswith("image_head._")]
    head = [p for k, p in params.items() if k in state_keys and not k.startswith("text_tower.")
            and not k.startswith("image_head._")]
    for p in tower + conv + head:
        p.requires_grad_(True)
    opt = torch.optim.AdamW([
        {"params": head, "lr": cfg.lr_head},
        {"params": tower + conv, "lr": cfg.lr_tower},
    ], weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in opt.param_groups]
    rng = np.random.default_rng(cfg.seed)
    caps_of = [np.flatnonzero(train.caption_image == i) for i in range(len(train.images))]
    n = len(train.images)
    steps_per_epoch = math.ceil(n * cfg.captions_per_image / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    best, best_report, step = None, None, 0
    for epoch in range(cfg.epochs):
        _set_train_mode(model)
        t0 = time.time()
        order = np.concatenate([rng.permutation(n) for _ in range(cfg.captions_per_image)])
        losses = []
        for s in range(0, len(order), cfg.batch_size):
            imgs = order[s:s + cfg.batch_size]
            caps = np.array([rng.choice(caps_of[i]) for i in imgs])
            lr_scale = min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / total))
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * lr_scale
            trunk = torch.from_numpy(np.asarray(train.trunk[np.sort(imgs)], np.float32))
            # restore the sampled order after the sorted (memory-map friendly) gather
            trunk = trunk[torch.from_numpy(np.argsort(np.argsort(imgs)))]
            states, mask = train.text_batch(caps)
            zi = model.encode_image_trunk(trunk)
            zt = model.encode_text_states(states, mask)
            logits = model.logit_scale.exp().clamp(max=100) * zt @ zi.T  # (B, B)
            # an image drawn twice in one batch (at a pass boundary) makes both of its pairs positives
            same = torch.from_numpy(imgs[:, None] == imgs[None, :]).float()
            target = same / same.sum(1, keepdim=True)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
        report = evaluate(model, dev)
        score = report["t2i"]["R@1"] + report["i2t"]["R@1"]
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "dev": report, "seconds": time.time() - t0,
                 "temperature": float(1 / model.logit_scale.exp())}
        cfg.history.append(entry)
        logger.info("epoch %d loss %.3f dev t2i R@1 %.2f i2t R@1 %.2f (%.0fs)", epoch + 1, entry["loss"],
                    report["t2i"]["R@1"], report["i2t"]["R@1"], entry["seconds"])
        if best_report is None or score > best_report["t2i"]["R@1"] + best_report["i2t"]["R@1"]:
            best, best_report = trainable_state(model, cfg), report
    return best, best_report


def save_checkpoint(path: Path, state: dict, cfg: AlignConfig, report: dict, pre: Preprocess, data: str) -> None:
    """Trainable weights (float16) + config + preprocessing + dev figures, in one torch file."""
    torch.save({
        "format": "xmodal-lite-align/1",
        "state": {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()},
        "config": {k: v for k, v in asdict(cfg).items() if k != "history"},
        "preprocess": asdict(pre),
        "dev": report,
        "history": cfg.history,
        "data": data,
    }, path)
    logger.info("wrote %s", path)


def default_cache_dir() -> Path:
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xmodal" / "features"


def run_align(data_dir: Path, out: Path | None = None, cache_dir: Path | None = None, epochs: int | None = None,
              seed: int = 0, **overrides) -> dict:
    """`xmodal train align`: cache features of the train and dev splits, train, keep the best dev epoch."""
    from indexer.datasets import load_captions_csv
    from indexer.encoders import LITE_HEADS

    from .features import build_cache

    data_dir = Path(data_dir)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    caches = {}
    for split in ("train", "dev"):
        ds = load_captions_csv(data_dir, data_dir / "splits" / f"{split}.txt")
        ds.name = f"{data_dir.name}-{split}"
        logger.info("%s: %d images, %d captions", ds.name, len(ds.images), len(ds.captions))
        caches[split] = build_cache(ds, cache_dir)
    train = caches["train"]
    train.trunk, train.text_states = np.asarray(train.trunk), np.asarray(train.text_states)  # into RAM
    cfg = AlignConfig(seed=seed, **overrides)
    if epochs is not None:
        cfg.epochs = epochs
    state, report = train_align(train, caches["dev"], cfg)
    out = Path(out) if out else LITE_HEADS
    save_checkpoint(out, state, cfg, report, Preprocess(), data=f"{data_dir.name} train split, selected on dev")
    best_epoch = max(cfg.history, key=lambda h: h["dev"]["t2i"]["R@1"] + h["dev"]["i2t"]["R@1"])["epoch"]
    return {"out": str(out), "epoch": best_epoch, "dev": report, "history": cfg.history}
