"""What reranking adds to a text query: median and p95 latency with and without reranking the top K.

    python benchmarks/rerank_latency.py [--library DIR] [--photos DIR] [--queries N] [--rerank-k 32] [--json]

Without --library it indexes the photos (default: ../shared/data/flickr8k/originals, the 100 full-size
photos; the lite model, patch tokens stored) into a temporary library first. Queries are Flickr8k dev
captions when the dataset is there, else a fixed list. Each query runs both ways back to back (order
alternating, after a warm-up), so the two are measured side by side in one run; the added time is the
per-query difference. The rerank stage alone (reading the stored tokens and dual vectors, the hubness
priors, the exemplar expansion and the fusion model's forward pass over K candidates) is timed too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"
FALLBACK_QUERIES = ["a dog running on the grass", "two children playing in the water", "a man riding a bike",
                    "a woman in a red dress", "people walking down a city street", "a black and white dog",
                    "a boy jumping into a swimming pool", "a group of people standing in the snow"]


def queries(n: int, step: int = 5) -> list[str]:
    captions = FLICKR8K / "captions.txt"
    dev = FLICKR8K / "splits" / "dev.txt"
    if captions.exists() and dev.exists():
        from xmodal.engine.eval.datasets import load_captions_csv

        ds = load_captions_csv(FLICKR8K, dev)
        return list(ds.captions[::step][:n])
    return (FALLBACK_QUERIES * (n // len(FALLBACK_QUERIES) + 1))[:n]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(library: Path, n_queries: int, rerank_ks=(32,), k: int = 10) -> dict:
    """Per K: the query time with reranking, the time added over the same query without (paired), and the
    rerank stage alone; every K and the plain query run back to back for each query, order rotating."""
    from xmodal.engine.rerank.backends import RerankQuery
    from xmodal.engine.search.engine import SearchEngine

    qs = queries(n_queries)
    ks = [0, *rerank_ks]
    times = {rk: [] for rk in ks}
    stage = {rk: [] for rk in rerank_ks}
    with SearchEngine(library) as eng:
        backend = eng.reranker
        if backend is None:
            raise SystemExit(f"{library}: no reranker for this library (built with {eng.model_name!r})")
        for q in qs[:5]:  # warm-up: model loading, first-call allocations, page cache
            for rk in ks:
                eng.search_text(q, k, rerank_k=rk)
        for n, q in enumerate(qs):
            for rk in ks[n % len(ks):] + ks[:n % len(ks)]:
                t0 = time.perf_counter()
                eng.search_text(q, k, rerank_k=rk)
                times[rk].append((time.perf_counter() - t0) * 1000)
            _, tokens = backend.query_tokens([q])
            candidates = eng.search_text(q, max(rerank_ks), rerank_k=0)
            for rk in rerank_ks:
                t0 = time.perf_counter()
                rq = RerankQuery(text=q, tokens=tokens)
                backend.score_images(rq, candidates[:rk])
                backend.priors(rq, candidates[:rk], "t2i")
                stage[rk].append((time.perf_counter() - t0) * 1000)
        images = eng.library.store.count_images()
        i2t = image_to_text(eng, backend, rerank_ks, k) if eng.library.store.count_texts() else None
    plain = times[0]
    out = {"library_images": images, "queries": len(qs), "k": k,
           "plain_ms_p50": statistics.median(plain), "plain_ms_p95": pct(plain, 95), "rerank": {},
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch_threads": _threads()}
    if i2t:
        out["image_to_text"] = i2t
    for rk in rerank_ks:
        added = [r - p for r, p in zip(times[rk], plain)]
        out["rerank"][rk] = {"query_ms_p50": statistics.median(times[rk]), "query_ms_p95": pct(times[rk], 95),
                             "added_ms_p50": statistics.median(added), "added_ms_p95": pct(added, 95),
                             "stage_ms_p50": statistics.median(stage[rk]), "stage_ms_p95": pct(stage[rk], 95)}
    return out


def image_to_text(eng, backend, rerank_ks, k: int, n: int = 60) -> dict:
    """"More like this" for texts (an indexed photo -> captions): the query time with and without reranking,
    and how much of the rerank is the MiniLM pass over the K candidate texts (computed at query time)."""
    ids = eng.library.store.all_image_ids()[:n].tolist()
    for i in ids[:3]:
        eng.similar(i, k, target="texts", rerank_k=max(rerank_ks))
    out = {"queries": len(ids), "texts": eng.library.store.count_texts(), "rerank": {}}
    plain = []
    for i in ids:
        t0 = time.perf_counter()
        eng.similar(i, k, target="texts", rerank_k=0)
        plain.append((time.perf_counter() - t0) * 1000)
    out["plain_ms_p50"] = statistics.median(plain)
    for rk in rerank_ks:
        total, encode, fusion = [], [], []
        for i in ids:
            t0 = time.perf_counter()
            eng.similar(i, k, target="texts", rerank_k=rk)
            total.append((time.perf_counter() - t0) * 1000)
            hits = eng.similar(i, rk, target="texts", rerank_k=0)
            tokens, _ = backend.image_patches([i])
            t0 = time.perf_counter()
            _, texts = backend.query_tokens([h.text for h in hits])
            t1 = time.perf_counter()
            backend.reranker.score(tokens[0], texts)
            t2 = time.perf_counter()
            encode.append((t1 - t0) * 1000)
            fusion.append((t2 - t1) * 1000)
        out["rerank"][rk] = {"query_ms_p50": statistics.median(total), "query_ms_p95": pct(total, 95),
                             "text_tokens_ms_p50": statistics.median(encode), "fusion_ms_p50": statistics.median(fusion)}
    return out


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def build_library(photos: Path, root: Path, texts: Path | None = None) -> Path:
    from xmodal.indexer.models.encoders import get_encoder
    from xmodal.indexer.storage.library import Library
    from xmodal.indexer.models.patch_projector import default_projector
    from xmodal.indexer.ingest.pipeline import index_images

    with Library(root, create=True) as lib:
        report = index_images(lib, [str(photos)], get_encoder("lite"), patches=default_projector("lite"))
        if texts is not None:
            from xmodal.indexer.ingest.pipeline import index_texts

            index_texts(lib, str(texts), get_encoder("lite"), tokens=True)
    if report.indexed == 0:
        raise SystemExit(f"no photos indexed from {photos}")
    return root


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", type=Path, default=None)
    ap.add_argument("--photos", type=Path, default=FLICKR8K / "originals")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--rerank-k", type=int, action="append", help="repeatable [default: 8 16 32 64]")
    ap.add_argument("--texts", type=int, default=2000,
                    help="also index this many dev captions and time image -> text reranking (0: skip)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        texts = None
        if args.texts and args.library is None:
            texts = Path(tmp) / "captions.txt"
            texts.write_text("\n".join(queries(args.texts * 5, step=1)[:args.texts]) + "\n")
        library = args.library or build_library(args.photos, Path(tmp) / "library", texts)
        result = run(library, args.queries, tuple(args.rerank_k or (8, 16, 32, 64)))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['queries']} text queries, {result['library_images']} photos, k = {result['k']} "
              f"({result['machine']}, {result['torch_threads']} torch threads)")
        print(f"  no rerank      query median {result['plain_ms_p50']:7.2f} ms  p95 {result['plain_ms_p95']:7.2f} ms")
        for rk, r in result["rerank"].items():
            print(f"  rerank top {rk:<3d} query median {r['query_ms_p50']:7.2f} ms  p95 {r['query_ms_p95']:7.2f} ms"
                  f" | added median {r['added_ms_p50']:6.2f} p95 {r['added_ms_p95']:6.2f}"
                  f" | stage median {r['stage_ms_p50']:6.2f} p95 {r['stage_ms_p95']:6.2f}")
        if "image_to_text" in result:
            i2t = result["image_to_text"]
            print(f"  image -> {i2t['texts']} texts, no rerank: median {i2t['plain_ms_p50']:.2f} ms")
            for rk, r in i2t["rerank"].items():
                print(f"  image -> texts, rerank top {rk:<3d} median {r['query_ms_p50']:7.2f} ms (MiniLM over the "
                      f"candidates {r['text_tokens_ms_p50']:.2f} ms, fusion {r['fusion_ms_p50']:.2f} ms)")
    return result


if __name__ == "__main__":
    main()
