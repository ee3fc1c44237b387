"""Speed at scale: query latency by stage, ANN recall and speed-up over exact search, memory and disk per
photo, for collections of 10k, 100k and 1M photos (10M with --scales on a machine with the memory for it).

    python benchmarks/scale.py [--scales 10000 100000 1000000] [--queries 200] [--budget-gb 1.5] [--json FILE]

A thin wrapper over engine.eval.scale.run_scale, the code `xmodal bench speed` runs too: this script only
parses arguments, loops over the scales and writes the JSON.

Vectors: beyond the real photos, collections are drawn to resemble the real embedding distribution of the
lite model's embeddings of real photos (default: the 7,000 Flickr8k train + dev photos), renormalised:
* `--distribution mixture` (default, engine.eval.simulate.mixture_like): a Gaussian mixture with k-means centres (one
  per 5 real photos, weighted by cluster size) and the pooled within-cluster covariance: the clustering of a
  real collection (groups of similar scenes), without near-duplicates;
* `--distribution gaussian` (engine.eval.simulate.gaussian_like): one Gaussian with the real mean and covariance, no
  cluster structure: a harder, worst-case set for every ANN method.
Queries are real: the lite text embeddings of dev captions. Without the Flickr8k data, the photos of
--photos (default the shipped samples) and a built-in query list (engine.eval.sources; the JSON says which).

Per scale, side by side in one run on the same vectors and queries:
* xmodal's own index (`choose_index` under the memory budget, trained on a sample, `tune_search_params` to
  recall@10 >= 0.95 on held-out queries), through indexer.vector_index exactly as a library uses it;
* exact FAISS `Flat` (inner product), NumPy brute force (matrix-vector product + argpartition), and
  hnswlib (M = 16, efSearch raised until it reaches the same recall), when installed;
* stages of one text query: encode (the real lite text tower), ANN search, metadata fetch from a real
  xmodal store holding that many rows (vectors in the rows, as a library stores them), and the rerank of
  the top 32 (the real reranker over stored-format patch tokens, with the hubness and exemplar terms of 32
  photo vectors; its cost does not depend on the scale);
* memory: resident set of a fresh search process that opens the saved index and the store, answers
  queries (ANN + metadata fetch) and holds the lite encoder and the reranker, as `xmodal search` does
  (measured in a child process, so the benchmark's own arrays do not count; `rss_index_store_mb` is the
  same before the models are loaded); disk: bytes per photo
  of the index file, the store and the patch tokens.
Every latency is single-query (batch of 1), median and p95 over the queries, after a warm-up.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from xmodal.engine.eval.scale import run_scale
from xmodal.engine.eval.sources import base_embeddings, default_data_dir
from xmodal.engine.eval.speed import machine, stage_latencies
from xmodal.indexer.models.encoders import get_encoder
from xmodal.indexer.resources import samples_dir


def header(args, base, stages) -> dict:
    """The run's description, shared with scale_10m.py."""
    m = machine()
    return {"date": datetime.now().strftime("%Y-%m-%d"), "machine": f"{m['cpu']}, {m['cores']} cores", **m,
            "model": args.model, "distribution": getattr(args, "distribution", "mixture"),
            "distribution_source": base.source, "base_photos": len(base.images),
            "budget_bytes": int(args.budget_gb * 1e9), "queries": len(base.tune_texts) + len(base.test_texts),
            **stages}


def common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--queries", type=int, default=200, help="dev captions: a quarter tune the index, the rest measure it")
    ap.add_argument("--budget-gb", type=float, default=1.5, help="memory budget for the index choice")
    ap.add_argument("--model", default="lite")
    ap.add_argument("--data", type=lambda s: Path(s) if s else None, default=default_data_dir(),
                    help="Flickr8k folder (default: beside the checkout, or $XMODAL_FLICKR8K; '' for none)")
    ap.add_argument("--photos", type=Path, default=None, help="photos to fit to without the Flickr8k data "
                    "[default: the shipped samples]")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--no-hnswlib", action="store_true")
    ap.add_argument("--distribution", choices=["mixture", "gaussian"], default="mixture",
                    help="mixture: clustered like the real photos (default); gaussian: one Gaussian, no clusters")
    ap.add_argument("--base", choices=["dev", "train+dev"], default="train+dev",
                    help="real photos whose embeddings the distribution is fitted to")
    common_args(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    try:
        import hnswlib  # noqa: F401
        hnsw = not args.no_hnswlib
    except ImportError:
        hnsw = False
        print("hnswlib is not installed (pip install -e .[bench]); its column is left out", file=sys.stderr)
    enc = get_encoder(args.model)
    base = base_embeddings(enc, args.data, args.photos or samples_dir(), args.queries,
                           ("dev",) if args.base == "dev" else ("train", "dev"))
    stages = stage_latencies(enc, base.captions, base.images)
    result = {**header(args, base, stages), "scales": []}
    for n in args.scales:
        with tempfile.TemporaryDirectory() as tmp:
            r = run_scale(n, base, Path(tmp), result["budget_bytes"], args.distribution, hnsw=hnsw, model=args.model,
                          stage_ms=stages)
        result["scales"].append(r)
        print(f"{n:>10,d}  {r['factory']:<22s} ANN p50 {r['ann_ms']['p50']:.2f} ms  recall@10 "
              f"{r['ann_recall_at_10']:.3f}  x{r['speedup_vs_exact']} vs exact  query p50 {r['query_ms_p50']:.1f} ms "
              f"(+rerank {r['query_ms_p50_with_rerank']})  rss {r['search_process']['rss_mb']:.0f} MB  "
              f"{r['disk_bytes_per_photo']['total'] / 1024:.1f} KB/photo  ({r['seconds']:.0f}s)", file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
