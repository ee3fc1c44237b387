"""A fresh search process over a saved index and store: what `xmodal search` holds in memory, measured apart
from the benchmark that built them (whose own arrays must not count).

    python -m xmodal.engine.eval.search_process WORKDIR --model lite < queries.json

opens WORKDIR/images.faiss (memory-mapped where the type allows) and WORKDIR's store, answers the queries
(ANN + metadata fetch), loads the models a search process holds (the encoder, to encode a text query, and
the model's own bundled reranker when it has one), and prints one JSON line: resident memory with and
without the models, and fetch latency. `measure(workdir, queries, model)` runs it and returns that dict.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

K = 10


def ms(seconds: list[float]) -> dict:
    a = np.asarray(seconds) * 1000
    return {"p50": round(float(np.median(a)), 3), "p95": round(float(np.percentile(a, 95)), 3)}


def measure(workdir: Path, queries: np.ndarray, model: str = "lite") -> dict:
    """Run the search process on `workdir` with `queries` ((q, d) float32) and return its report."""
    proc = subprocess.run([sys.executable, "-m", "xmodal.engine.eval.search_process", str(workdir), "--model", model],
                          capture_output=True, text=True, input=json.dumps(np.asarray(queries).tolist()))
    if proc.returncode:
        raise RuntimeError(f"the search process failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _status() -> dict:
    return dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)


def _mb(st: dict, key: str) -> float:
    return round(int(st[key].split()[0]) / 1024, 1)


def run(workdir: Path, queries: np.ndarray, model: str) -> dict:
    from xmodal.indexer.storage.library import store_rescorer  # imports torch, as every search process does
    from xmodal.indexer.storage.store import Store
    from xmodal.indexer.storage.vector_index import VectorIndex

    t0 = time.perf_counter()
    index = VectorIndex.load(workdir / "images.faiss", mmap=True)
    store = Store(workdir)
    index.rescore = store_rescorer(store, "images", index.dim)  # as a library does (used only with `refine`)
    opened = time.perf_counter() - t0
    fetch = []
    for q in queries:
        _, ids = index.search(q[None], K)
        t = time.perf_counter()
        store.get_images([int(i) for i in ids[0] if i >= 0])
        fetch.append(time.perf_counter() - t)
    index_store = _mb(_status(), "VmRSS")
    # and what `xmodal search` holds besides: the encoder (to encode the query) and the model's own reranker
    from xmodal.indexer.models.base import ModelUnavailable
    from xmodal.indexer.models.encoders import get_encoder

    models, held = [], []  # held: the models stay alive until memory is read
    try:
        enc = get_encoder(model)
        held.append(enc)
        (enc.encode_text_states if hasattr(enc, "encode_text_states") else enc.encode_texts)(["a warm-up query"])
        models.append(model)
    except ModelUnavailable:  # e.g. an encoder registered at run time by the benchmark's caller only
        pass
    from xmodal.indexer.models.towers import bundled_reranker

    checkpoint = bundled_reranker(model)  # the model's own reranker, when it has one
    if checkpoint is not None:
        from xmodal.engine.rerank.lite import Reranker

        held.append(Reranker(checkpoint))
        models.append("reranker")
    st = _status()
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forked parent across exec
    return {"open_s": round(opened, 3), "rss_mb": _mb(st, "VmRSS"), "rss_index_store_mb": index_store,
            "peak_rss_mb": _mb(st, "VmHWM"), "fetch_ms": ms(fetch[5:] or fetch), "models": models}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--model", default="lite")
    args = ap.parse_args(argv)
    queries = np.asarray(json.loads(sys.stdin.read()), np.float32)
    print(json.dumps(run(args.workdir, queries, args.model)))


if __name__ == "__main__":
    main()
