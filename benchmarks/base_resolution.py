"""Input resolution at index time: the dual encoder's dev R@1 when photos are embedded at another size than
the heads were trained at, and what each size costs.

    python benchmarks/base_resolution.py [--model base] [--sizes 224 260 300 320] [--heads A.pt B.pt ...]

The heads stay those trained at the model's own size (base: Lite2 at 260 px); only the photos' input size
changes (squashed to size x size, as always). A fully convolutional tower with mean pooling takes any size: a
larger one sees finer detail at 1/32 of the pixels per patch, and costs about (size / 260)^2 more. Captions
are embedded once (the cached text features). Each size's pooled features are computed once per run; the
heads (`--heads`, default the shipped one; e.g. the three seeds' base-align-sS.pt) are compared on them.
Also reported: the image tower's time per photo at each size (torch, one thread, batches of 16, median of
3 passes over 64 dev photos), and flip test-time features at the model's size. Writes
benchmarks/base_resolution.json.

    python benchmarks/base_resolution.py --rerank 320 --heads H0 H1 H2 --rerankers R0 R1 R2

reranks instead: each heads file with its matcher (trained at the model's size) at the model's size and at
320 px, where the larger patch map (10 x 10) is average-pooled to the matcher's 9 x 9 tokens; the fusion
weights are the checkpoint's (chosen at 260) and, beside them, chosen again on dev as `--refit` would.
Writes benchmarks/base_resolution_rerank.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from xmodal.engine.eval.machine import cpu_name

REPO = Path(__file__).resolve().parent.parent
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"


def pooled_features(tower, paths: list[str], size: int, flip: bool = False) -> torch.Tensor:
    """(N, 1280) whole-map means of the tower's patch maps at `size` (mirror images when `flip`)."""
    from xmodal.indexer.ingest.decode import iter_decoded
    from xmodal.indexer.ingest.pipeline import batched
    from xmodal.indexer.models.base import Preprocess

    pre, out = Preprocess(size=size), []
    with torch.inference_mode():
        for batch in batched(iter_decoded(paths, target_size=size), 32):
            x = pre([b.image for b in batch])
            out.append(tower.forward_features(x.flip(3) if flip else x).mean((2, 3)))
    return torch.cat(out)


def _mean_pooled_heads(model, path):
    """This benchmark caches mean-pooled features per size: heads trained with GeM pooling would read them
    wrongly, so they are refused (the heads it measured, base's until 2026-12-01 evening, were mean-pooled)."""
    if model.pool_p != 1:
        raise SystemExit(f"{path}: heads trained with GeM pooling (pool_p={model.pool_p}); this benchmark measures "
                         "mean-pooled heads only")
    return model


def tower_ms(tower, paths: list[str], size: int) -> float:
    """Median ms per photo of the tower alone (decoded, resized photos; one thread; batches of 16)."""
    from PIL import Image

    from xmodal.indexer.models.base import Preprocess

    x = Preprocess(size=size)([Image.open(p).convert("RGB") for p in paths[:64]])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = []
    with torch.inference_mode():
        for _ in range(3):
            t0 = time.perf_counter()
            for s in range(0, len(x), 16):
                tower.forward_features(x[s:s + 16])
            runs.append((time.perf_counter() - t0) * 1000 / len(x))
    torch.set_num_threads(threads)
    return round(statistics.median(runs), 1)


_MAPS: dict = {}


def rerank_at(size: int, spec, heads: Path, reranker: Path, ds, fc, tower) -> dict:
    """Dev recall of `heads` + `reranker` with photos at `size`: dual, and K = 32 reranked with the checkpoint's
    fusion weights and with weights chosen on dev."""
    import torch.nn.functional as F

    from xmodal.engine.rerank.lite import Reranker
    from xmodal.engine.rerank.scoring import hub_prior
    from xmodal.engine.training.align import default_cache_dir
    from xmodal.engine.training.rerank import rerank_eval
    from xmodal.engine.training.rerank_data import cache_tokens, expansion_matrix, to_patch_tokens
    from xmodal.indexer.ingest.decode import iter_decoded
    from xmodal.indexer.ingest.pipeline import batched
    from xmodal.indexer.models.base import Preprocess
    from xmodal.indexer.models.lite_encoder import LiteEncoder

    rr = Reranker(reranker)
    raw = torch.load(reranker, map_location="cpu", weights_only=True)
    side = int(round(rr.patches ** 0.5))
    if (size, side) not in _MAPS:  # the photos' features at this size, once per run
        pre, maps, pooled = Preprocess(size=size), [], []
        with torch.inference_mode():
            for batch in batched(iter_decoded([str(ds.image_dir / n) for n in ds.images], target_size=size), 32):
                m = tower.forward_features(pre([b.image for b in batch]))  # (B, 1280, h, w)
                pooled.append(m.mean((2, 3)))
                maps.append(F.adaptive_avg_pool2d(m, side).half())  # the matcher's 9 x 9 tokens
        _MAPS[(size, side)] = torch.cat(maps), torch.cat(pooled)
    maps, pooled = _MAPS[(size, side)]
    with torch.inference_mode():
        dual = _mean_pooled_heads(LiteEncoder(heads, name=spec.name, extra=spec.extra).model.eval(), heads)
        img = dual.embed_pooled_image(pooled)
        txt = dual.embed_pooled_text(torch.from_numpy(np.asarray(fc.text, np.float32)))
    patches = to_patch_tokens(maps, raw["pca"]["mean"].float(), raw["pca"]["proj"].float())
    tokens = cache_tokens(list(ds.captions), ds.name, default_cache_dir(), spec.text_tower)
    bank = {"texts": rr.hub["texts"], "images": torch.as_tensor(np.asarray(rr.hub["images"])),
            "tau": rr.hub["tau"], "exemplars": raw["hub"]["exemplars"]}
    priors = (hub_prior(img.numpy(), rr.hub["texts"], rr.hub["tau"]), hub_prior(txt.numpy(), rr.hub["images"], rr.hub["tau"]))
    expansion = expansion_matrix(bank, fc.text, img)
    out = {}
    for how, a, b in (("shipped weights", rr.alpha, rr.beta), ("weights chosen on dev", None, None)):
        rep = rerank_eval(rr.model, tokens, patches, (txt @ img.T).numpy(), fc.caption_image, ks=(32,),
                          priors=priors, expansion=expansion, alpha=a, beta=b)
        out["dual"] = {d: {k: round(v, 2) for k, v in rep["dual"][d].items()} for d in ("t2i", "i2t")}
        row = rep["K"][32]
        out[how] = {"alpha": row["alpha"], "beta": row["beta"],
                    **{d: {k: round(v, 2) for k, v in row[d].items()} for d in ("t2i", "i2t")}}
    return out


def rerank_main(args, spec, ds, fc, tower) -> None:
    if len(args.rerankers or []) != len(args.heads or []):
        raise SystemExit("--rerank needs one --rerankers file per --heads file")
    t0 = time.time()
    report = {"machine": cpu_name(), "model": args.model, "trained_at": spec.size, "K": 32,
              "split": "Flickr8k dev (1,000 photos, 5,000 captions)", "runs": {}}
    for h, r in zip(args.heads, args.rerankers):
        report["runs"][Path(h).name] = {str(s): rerank_at(s, spec, h, r, ds, fc, tower) for s in (spec.size, args.rerank)}
        print(Path(h).name, json.dumps(report["runs"][Path(h).name]), flush=True)
    report["seconds"] = round(time.time() - t0, 1)
    (args.out.parent / "base_resolution_rerank.json").write_text(json.dumps(report, indent=1) + "\n")


def main() -> None:
    from xmodal.engine.eval.datasets import load_captions_csv
    from xmodal.engine.eval.recall import recall_report
    from xmodal.engine.training.align import default_cache_dir
    from xmodal.engine.training.features import build_cache
    from xmodal.indexer.models.base import Preprocess
    from xmodal.indexer.models.lite_encoder import LiteEncoder
    from xmodal.indexer.models.towers import BUNDLED, load_image_tower
    from xmodal.indexer.resources import data_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="base")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 260, 300, 320])
    ap.add_argument("--heads", type=Path, nargs="*", default=None)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "base_resolution.json")
    ap.add_argument("--rerank", type=int, default=0, help="rerank at the model's size and at this size instead")
    ap.add_argument("--rerankers", type=Path, nargs="*", default=None)
    args = ap.parse_args()
    spec = BUNDLED[args.model]
    heads = args.heads or [data_file(spec.heads)]
    ds = load_captions_csv(FLICKR8K, FLICKR8K / "splits" / "dev.txt")
    ds.name = f"{FLICKR8K.name}-dev"
    fc = build_cache(ds, default_cache_dir(), Preprocess(size=spec.size), towers=(spec.image_tower, spec.text_tower))
    paths = [str(ds.image_dir / n) for n in ds.images]
    tower = load_image_tower(spec.image_tower).eval()
    if args.rerank:
        return rerank_main(args, spec, ds, fc, tower)
    t0 = time.time()
    features = {str(s): pooled_features(tower, paths, s) for s in args.sizes}
    features[f"{spec.size} + flip"] = pooled_features(tower, paths, spec.size, flip=True)
    report = {"machine": cpu_name(), "model": args.model, "trained_at": spec.size,
              "split": "Flickr8k dev (1,000 photos, 5,000 captions)", "heads": [str(h) for h in heads],
              "tower_ms_per_photo": {str(s): tower_ms(tower, paths, s) for s in args.sizes}, "by_heads": {}}
    for h in heads:
        model = _mean_pooled_heads(LiteEncoder(h, name=spec.name, extra=spec.extra).model.eval(), h)
        with torch.inference_mode():
            txt = model.embed_pooled_text(torch.from_numpy(np.asarray(fc.text, np.float32)))

            def recall(img: torch.Tensor) -> dict:
                r = recall_report((txt @ img.T).numpy(), fc.caption_image)
                return {d: {k: round(v, 2) for k, v in r[d].items()} for d in ("t2i", "i2t")}

            rows = {size: recall(model.embed_pooled_image(f)) for size, f in features.items() if "flip" not in size}
            flip = features[f"{spec.size} + flip"]
            pair = torch.nn.functional.normalize(model.embed_pooled_image(features[str(spec.size)])
                                                 + model.embed_pooled_image(flip), dim=-1)
            rows[f"{spec.size} + flip (mean embedding)"] = recall(pair)
        report["by_heads"][Path(h).name] = rows
        print(Path(h).name, {k: (v["t2i"]["R@1"], v["i2t"]["R@1"]) for k, v in rows.items()}, flush=True)
    keys = list(next(iter(report["by_heads"].values())))
    if len(heads) > 1:
        report["mean"] = {k: {d: {m: round(statistics.mean(r[k][d][m] for r in report["by_heads"].values()), 2)
                                  for m in ("R@1", "R@5", "R@10")} for d in ("t2i", "i2t")} for k in keys}
        report["sd_R@1"] = {k: {d: round(statistics.stdev(r[k][d]["R@1"] for r in report["by_heads"].values()), 2)
                                for d in ("t2i", "i2t")} for k in keys}
    report["seconds"] = round(time.time() - t0, 1)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report.get("mean", {}), indent=1), report["tower_ms_per_photo"])


if __name__ == "__main__":
    main()
