"""The query algebra's exclusions (`a dog -grass`) on Flickr8k dev: how often the top hits still show the
excluded thing, and whether they still show what was asked for.

    python benchmarks/query_algebra.py [--data ../shared/data/flickr8k] [--out benchmarks/query_algebra.json]

The 1,000 dev photos are indexed with the lite model (the product's path). A photo "shows" a word when one of
its five human captions contains it (whole word, its plural, or a listed synonym: a man is one of "people"). For each (positive, excluded) pair below,
over the top 10: the share of photos that show the excluded word and the share that show the positive word,
for the plain query, for `positive -excluded` (reranked: the reranker scores the positive terms only, the
default), for the same with reranking off, and with the exclusion at half weight (`-0.5:excluded`).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"
# (positive, excluded, positive's word): scenes the excluded thing is often in on Flickr8k, so the plain query shows it
PAIRS = [("water", "dog", "water"), ("snow", "dog", "snow"), ("grass", "dog", "grass"), ("a field", "dog", "field"),
         ("a beach", "people", "beach"), ("a street", "people", "street"), ("a ball", "dog", "ball"),
         ("a pool", "boy", "pool"), ("a rock", "man", "rock"), ("the sand", "dog", "sand"),
         ("a frisbee", "dog", "frisbee"), ("a bike", "man", "bike")]
SYNONYMS = {"dog": ["dog", "puppy", "puppies"],
            "people": ["people", "person", "man", "men", "woman", "women", "boy", "girl", "child", "children", "crowd"],
            "man": ["man", "men", "person", "guy"], "boy": ["boy", "child", "kid", "children"]}


def shows(captions: list[str], word: str) -> bool:
    """One of the captions names the word (or a plural, or a synonym listed above)."""
    words = SYNONYMS.get(word, [word])
    return any(re.search(rf"\b{re.escape(w)}(s|es)?\b", c.lower()) for c in captions for w in words)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=FLICKR8K)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "query_algebra.json")
    args = ap.parse_args()
    import csv

    from duplicates import cpu_name  # benchmarks/duplicates.py
    from xmodal.engine.search.engine import SearchEngine
    from xmodal.indexer import index_folders

    dev = set((args.data / "splits" / "dev.txt").read_text().split())
    captions: dict[str, list[str]] = {}
    with open(args.data / "captions.txt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["image"] in dev:
                captions.setdefault(row["image"], []).append(row["caption"])
    variants = {"plain": lambda p, n: (p, None), "exclude": lambda p, n: (f"{p} -{n}", None),
                "exclude_no_rerank": lambda p, n: (f"{p} -{n}", 0), "exclude_half": lambda p, n: (f"{p} -0.5:{n}", None)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        for name in sorted(dev):
            (photos / name).symlink_to(args.data / "images" / name)
        index_folders(Path(tmp) / "lib", [photos], model="lite")
        with SearchEngine(Path(tmp) / "lib") as eng:
            for pos, neg, noun in PAIRS:
                row = {"positive": pos, "excluded": neg}
                for name, make in variants.items():
                    q, rk = make(pos, neg)
                    t0 = time.perf_counter()
                    hits = eng.search_text(q, args.k, rerank_k=rk)
                    ms = (time.perf_counter() - t0) * 1000
                    caps = [captions[Path(h.path).name] for h in hits]
                    row[name] = {"query": q, "shows_excluded": sum(shows(c, neg) for c in caps) / len(caps),
                                 "shows_positive": sum(shows(c, noun) for c in caps) / len(caps), "ms": round(ms, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {name: {"shows_excluded": round(statistics.mean(r[name]["shows_excluded"] for r in rows), 3),
                      "shows_positive": round(statistics.mean(r[name]["shows_positive"] for r in rows), 3)}
               for name in variants}
    out = {"cpu": cpu_name(), "machine": "shared with 5 other engineers' jobs (2 cores)", "date": time.strftime("%Y-%m-%d"),
           "data": "Flickr8k dev, 1,000 photos", "top_k": args.k, "mean_over_queries": summary, "queries": rows}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
