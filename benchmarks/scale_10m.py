"""Speed at 10 million photos on a machine whose memory cannot hold 10M raw vectors beside an index.

    python benchmarks/scale_10m.py [--n 10000000] [--queries 800] [--budget-gb 1.5] [--json FILE]

The same code as benchmarks/scale.py and `xmodal bench speed` (engine.eval.scale.run_scale; scale.py's
docstring describes the vectors, queries and stages); run_scale changes by itself only where 10M x 512 float32 vectors (20.5 GB) do not fit in this machine's 24 GB next to the
index being built:
* the simulated vectors (the Gaussian mixture fitted to the real photos' lite embeddings) are kept as
  float16 (10.2 GB, memory-mapped from a file beside the store), and every consumer (xmodal's index, exact search, NumPy) sees the same float32 values
  converted back from them;
* exact search streams the vectors in 1M pieces: each piece becomes a FAISS `Flat` (inner product) that
  answers all the queries (the true neighbours, merged over the pieces) and, one query at a time on one
  thread, the timed ones; a query's exact time is the sum of its times over the pieces: a full scan of the
  10M vectors, as a resident Flat would do it. NumPy brute force is timed the same way;
* hnswlib is left out: its graph over 10M raw vectors needs more than 24 GB.
xmodal's index is built as a library builds it: `choose_index` under the budget, trained on a 200k sample,
vectors added in batches beside a real 10M-row store (vectors in the rows), `tune_search_params` to
recall@10 >= 0.95 (with the streamed exact search; compressed codes that fall short shortlist k * refine
candidates and rank them by the exact vectors read from the store), saved, then a fresh search process
memory-maps it, re-ranks from the store and fetches metadata.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from xmodal.engine.eval.scale import PIECE, run_scale
from xmodal.engine.eval.sources import base_embeddings
from xmodal.engine.eval.speed import stage_latencies
from xmodal.indexer.models.encoders import get_encoder
from xmodal.indexer.resources import samples_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import common_args, header  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--timed-exact", type=int, default=20, help="queries timed on the streamed exact search")
    ap.add_argument("--piece", type=int, default=PIECE, help="vectors per piece of the streamed exact search "
                    "(collections up to this size are searched by a resident Flat)")
    common_args(ap)
    ap.set_defaults(queries=800)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    enc = get_encoder(args.model)
    base = base_embeddings(enc, args.data, args.photos or samples_dir(), args.queries, ("train", "dev"))
    stages = stage_latencies(enc, base.captions, base.images)
    result = header(args, base, stages)
    with tempfile.TemporaryDirectory() as tmp:
        result["scale"] = run_scale(args.n, base, Path(tmp), result["budget_bytes"], "mixture", model=args.model,
                                    timed_exact=args.timed_exact, piece=args.piece,
                                    stage_ms=stages)
    r = result["scale"]
    logging.info(f"{args.n:,}: {r['factory']} ANN p50 {r['ann_ms']['p50']:.2f} ms recall@10 "
                 f"{r['ann_recall_at_10']:.3f} x{r['speedup_vs_exact']} vs exact; query p50 {r['query_ms_p50']:.1f} ms "
                 f"(+rerank {r['query_ms_p50_with_rerank']}); search process {r['search_process']['rss_mb']:.0f} MB")
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
