"""Does a first stage corrected for hubness give the reranker a better top-K pool?

    python benchmarks/first_stage_pool.py HEADS.pt RERANK.pt [--out benchmarks/first_stage_pool.json]

Search reranks the dual encoder's top K (32) by cosine. The reranker's hubness prior (querybank normalisation)
is a per-candidate bias and its exemplar term a query expansion, so both could enter the first stage over the
whole collection instead. This compares the reranked R@1/5/10 on Flickr8k dev with the pool taken by cosine
("cos"), by cosine - prior ("qb_only", t2i) and by cosine - prior + beta * exemplar ("qb"), the matcher's scores
computed for the union of the pools and alpha (and beta) chosen on dev for each, as `--refit` chooses them.
Base's files: `make install-base`; the dev features come from the cache `xmodal train rerank` builds.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from xmodal.engine.eval.machine import cpu_name

REPO = Path(__file__).resolve().parent.parent
ALPHAS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
BETAS = (0.0, 0.05, 0.1, 0.15, 0.2)


def main() -> None:
    from i2t_exemplar import dev_features  # a sibling script: benchmarks/ is on sys.path when run
    from xmodal.engine.training.rerank_data import score_pairs
    from xmodal.indexer.models.towers import BUNDLED

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("heads", type=Path)
    ap.add_argument("reranker", type=Path)
    ap.add_argument("--model", default="base", choices=sorted(BUNDLED))
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "first_stage_pool.json")
    args = ap.parse_args()
    t0, k = time.time(), args.k
    f = dev_features(args.model, args.heads, args.reranker)
    rr, fc, tokens, patches = f["rr"], f["fc"], f["tokens"], f["patches"]
    img, txt = f["img"].numpy(), f["txt"].numpy()
    ci = np.asarray(fc.caption_image, np.int64)
    sim = txt @ img.T  # (n_cap, n_img)
    prior_img, prior_cap = rr.hub_prior(img, "t2i"), rr.hub_prior(txt, "i2t")
    ex = rr.exemplar_matrix(np.asarray(fc.text, np.float32), img)
    top = lambda m: np.argsort(-m, axis=1, kind="stable")[:, :k]  # noqa: E731
    pools = {"t2i": {"cos": top(sim), "qb_only": top(sim - prior_img[None]),
                     "qb": top(sim - prior_img[None] + rr.beta["t2i"] * ex)},
             "i2t": {"cos": top(sim.T), "qb": top(sim.T - prior_cap[None])}}
    pairs = {(q, int(j)) for p in pools["t2i"].values() for q, row in enumerate(p) for j in row}
    pairs |= {(int(c), i) for p in pools["i2t"].values() for i, row in enumerate(p) for c in row}
    pairs = np.array(sorted(pairs))
    match = dict(zip(map(tuple, pairs.tolist()), score_pairs(rr.model, tokens, patches, pairs[:, 0], pairs[:, 1])))

    def ranked(cands, fused, hit) -> tuple[float, float, float]:
        pos = [np.flatnonzero(hit(q, c[np.argsort(-f, kind="stable")])) for q, (c, f) in enumerate(zip(cands, fused))]
        first = np.array([p[0] if len(p) else k for p in pos])
        return tuple(round(100 * float((first < n).mean()), 2) for n in (1, 5, 10))

    def t2i(p, a, b):
        fused = [sim[q, c] - prior_img[c] + b * ex[q, c] + a * np.array([match[(q, int(j))] for j in c])
                 for q, c in enumerate(p)]
        return ranked(p, fused, lambda q, order: order == ci[q])

    def i2t(p, a):
        fused = [sim[c, i] - prior_cap[c] + a * np.array([match[(int(j), i)] for j in c]) for i, c in enumerate(p)]
        return ranked(p, fused, lambda i, order: ci[order] == i)

    report = {"machine": cpu_name(), "heads": args.heads.name, "reranker": args.reranker.name, "K": k,
              "note": "R@1/5/10 reranked; alpha (and beta) chosen on dev per pool (ties: smaller weights)"}
    for name, p in pools["t2i"].items():
        got = {(a, b): t2i(p, a, b) for a in ALPHAS for b in BETAS}
        best = max(got, key=lambda w: (got[w][0], -w[0], -w[1]))
        report[f"t2i {name}"] = {"alpha": best[0], "beta": best[1], "R@1/5/10": got[best]}
    for name, p in pools["i2t"].items():
        got = {a: i2t(p, a) for a in ALPHAS}
        best = max(got, key=lambda a: (got[a][0], -a))
        report[f"i2t {name}"] = {"alpha": best, "R@1/5/10": got[best]}
    report["seconds"] = round(time.time() - t0, 1)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
