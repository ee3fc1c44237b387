"""Candidate towers for a "base" model, compared on a mini protocol sized for a shared 2-core CPU (issue 22).

Extracting features of all of Flickr8k (7,000 photos, 35,000 captions) through EfficientNet-Lite2 and
all-mpnet-base-v2 costs about 30 CPU-minutes, more than a shared session had; so every pair is trained
and measured on the same subsets:

- train: the first NTRAIN photos of the train split, their first 2 captions each;
- dev: the first 500 photos of the dev split with all 5 captions (2,500). R@K over 500 photos is higher than
  over the usual 1,000: compare the pairs with each other here, not with the lite model's card figures.

Steps (features go to --cache, outside the repo; text features in bf16 autocast, cos >= 0.99998 to fp32):

    python benchmarks/base_towers.py extract img efficientnet-lite2 224
    python benchmarks/base_towers.py extract txt all-mpnet-base-v2
    python benchmarks/base_towers.py extract imgflip efficientnet-lite0 224   # optional: flip TTA on dev
    python benchmarks/base_towers.py proxy           # text -> text on dev captions, towers alone
    python benchmarks/base_towers.py train --seeds 0 1 2 --out benchmarks/base_towers.json
    # or one process per pair and seed (--pairs A+B --seeds S --out runs/A-B-S.json), then:
    python benchmarks/base_towers.py merge runs/*.json --out benchmarks/base_towers.json

Heads are trained with the repo's trainer (`engine.training.align.train_align`, the lite model's config).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from xmodal.engine.eval.datasets import load_captions_csv
from xmodal.engine.training.align import AlignConfig, train_align
from xmodal.engine.training.features import FeatureCache, _cache_images, _cache_texts
from xmodal.indexer.models.base import Preprocess

log = logging.getLogger("base_towers")
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "flickr8k"
NDEV, KCAP = 500, 2


def _subset(split: str, n: int, k: int):
    ds = load_captions_csv(DATA, DATA / "splits" / f"{split}.txt")
    ds.name = f"flickr8k-{split}"
    ci = np.asarray(ds.caption_image)
    rank = np.zeros(len(ci), int)
    for i in range(1, len(ci)):
        rank[i] = rank[i - 1] + 1 if ci[i] == ci[i - 1] else 0
    keep = np.flatnonzero((ci < n) & (rank < k))
    return ds, keep, ci


class FlippedPreprocess(Preprocess):
    """The same pixels mirrored left-right: the flip test-time feature."""

    def array(self, images):
        return np.ascontiguousarray(super().array(images)[:, :, ::-1])


def extract(kind: str, tower: str, size: int, cache: Path, ntrain: int) -> None:
    """kind: img (train and dev), imgflip (dev only, mirrored) or txt."""
    torch.set_num_threads(1)
    for split, n, k in (("dev", NDEV, 5), ("train", ntrain, KCAP)):
        if kind == "imgflip" and split == "train":
            continue
        ds, keep, ci = _subset(split, n, k)
        t0, c0 = time.time(), time.process_time()
        if kind in ("img", "imgflip"):
            out = cache / f"img{'' if kind == 'img' else 'flip'}-{tower}-{size}-{split}{n}.npy"
            if out.exists():
                continue
            ds.images = ds.images[:n]
            pre = (Preprocess if kind == "img" else FlippedPreprocess)(size=size)
            _cache_images(ds, out, pre, 32, tower)
            count = n
        else:
            out = cache / f"txt-{tower}-{split}{n}k{k}.npy"
            if out.exists():
                continue
            np.save(cache / f"capimg-{split}{n}k{k}.npy", ci[keep])
            ds.captions = [ds.captions[i] for i in keep]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                _cache_texts(ds, out, tower, 64)
            count = len(keep)
        log.info("%s %s %s: %d items, %.1f s wall, %.1f ms CPU per item", kind, tower, split, count,
                 time.time() - t0, 1000 * (time.process_time() - c0) / count)


def _cache(cache: Path, image: str, text: str, split: str, n: int, k: int, size: int = 224) -> FeatureCache:
    trunk = np.load(cache / f"img-{image}-{size}-{split}{n}.npy", mmap_mode="r")
    return FeatureCache([str(i) for i in range(n)], trunk, np.load(cache / f"txt-{text}-{split}{n}k{k}.npy"),
                        np.load(cache / f"capimg-{split}{n}k{k}.npy").astype(np.int64))


def proxy(cache: Path) -> dict:
    """Text -> text on the dev captions with each text tower alone: is a caption's nearest other caption one
    of the same photo's? (R@1 over 2,499 others.)"""
    out = {}
    ci = np.load(cache / f"capimg-dev{NDEV}k5.npy")
    for f in sorted(cache.glob(f"txt-*-dev{NDEV}k5.npy")):
        x = np.load(f)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        out[f.name.split("-dev")[0][4:]] = round(100 * float(np.mean(ci[sim.argmax(1)] == ci)), 2)
    return out


# the lite config (engine.training.align.AlignConfig) but batch 256 and 20 warm-up steps: with 2,000 pairs the
# default batch of 512 gives 4 steps an epoch, and 12 epochs end before its 50 warm-up steps do.
SMALL_DATA = {"batch_size": 256, "warmup_steps": 20}


def train(cache: Path, pairs: list[tuple[str, str]], seeds: list[int], ntrain: int, size: int = 224) -> list[dict]:
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    runs = []
    for image, text in pairs:
        tr = _cache(cache, image, text, "train", ntrain, KCAP, size)
        dv = _cache(cache, image, text, "dev", NDEV, 5, size)
        for seed in seeds:
            cfg = AlignConfig(seed=seed, image_tower=image, text_tower=text, size=size, **SMALL_DATA)
            t0 = time.time()
            state, report = train_align(tr, dv, cfg)
            best = max(cfg.history, key=lambda h: h["dev"]["t2i"]["R@1"] + h["dev"]["i2t"]["R@1"])
            runs.append({"image_tower": image, "text_tower": text, "size": size, "seed": seed, "dev": report,
                         "best_epoch": best["epoch"], "seconds": round(time.time() - t0, 1)})
            flip = cache / f"imgflip-{image}-{size}-dev{NDEV}.npy"
            if flip.exists():  # flip TTA: the mean of the photo's and its mirror's pooled features, same heads
                runs[-1]["dev_flip_tta"] = flip_tta(state, cfg, dv, np.load(flip))
            log.info("%s + %s seed %d: t2i R@1 %.2f i2t R@1 %.2f", image, text, seed, report["t2i"]["R@1"],
                     report["i2t"]["R@1"])
    return runs


def flip_tta(state: dict, cfg: AlignConfig, dev: FeatureCache, flipped: np.ndarray) -> dict:
    from xmodal.engine.training.align import build_model, evaluate, patch_maps

    model = build_model(cfg)
    model.load_state_dict(state, strict=False)
    pooled = [patch_maps(t, image_tower=cfg.image_tower).float().mean((2, 3)) for t in (dev.trunk, flipped)]
    return evaluate(model, (pooled[0] + pooled[1]) / 2, dev)


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    def key_of(r: dict) -> tuple:
        return r["image_tower"], r["text_tower"], r.get("size", 224)

    for key in dict.fromkeys(key_of(r) for r in runs):
        rs = [r for r in runs if key_of(r) == key]
        row = {"image_tower": key[0], "text_tower": key[1], "size": key[2], "seeds": len(rs)}
        for d in ("t2i", "i2t"):
            for k in ("R@1", "R@5", "R@10"):
                v = [r["dev"][d][k] for r in rs]
                row[f"{d} {k}"] = [round(float(np.mean(v)), 2), round(float(np.std(v)), 2)]
                if all("dev_flip_tta" in r for r in rs):
                    v = [r["dev_flip_tta"][d][k] for r in rs]
                    row[f"flip TTA {d} {k}"] = [round(float(np.mean(v)), 2), round(float(np.std(v)), 2)]
        rows.append(row)
    return rows


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["extract", "proxy", "train", "merge"])
    ap.add_argument("args", nargs="*")
    ap.add_argument("--cache", type=Path, default=Path("/work/cache-base/feat"))
    ap.add_argument("--ntrain", type=int, default=1000)
    ap.add_argument("--size", type=int, default=224, help="input pixels of the image features to train on")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--pairs", nargs="+", default=["efficientnet-lite0+all-minilm-l6-v2",
                                                   "efficientnet-lite2+all-minilm-l6-v2",
                                                   "efficientnet-lite0+all-mpnet-base-v2",
                                                   "efficientnet-lite2+all-mpnet-base-v2"])
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    a.cache.mkdir(parents=True, exist_ok=True)
    if a.step == "extract":
        kind, tower = a.args[0], a.args[1]
        extract(kind, tower, int(a.args[2]) if kind.startswith("img") else 0, a.cache, a.ntrain)
        return
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with 5 other "
                         "sessions (load average 12-17): times are not speed figures",
              "protocol": {"train": f"first {a.ntrain} Flickr8k train photos x {KCAP} captions",
                           "dev": f"first {NDEV} dev photos x 5 captions", "input": f"{a.size} px, squashed (per run: size)",
                           "heads": f"lite config with {SMALL_DATA}"}}
    result["text_to_text_R@1"] = proxy(a.cache)
    if a.step == "merge":  # runs of `train` made in parallel (one process per pair and seed), into one file
        runs = [r for f in a.args for r in json.loads(Path(f).read_text())["runs"]]
        result["runs"], result["summary"] = runs, summarise(runs)
    if a.step == "train":
        runs = train(a.cache, [tuple(p.split("+")) for p in a.pairs], a.seeds, a.ntrain, a.size)
        result["runs"], result["summary"] = runs, summarise(runs)
    print(json.dumps(result, indent=1))
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
