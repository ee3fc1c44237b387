"""The bundled models side by side (issue 22): lite and base, measured in one run on this machine.

    .venv/bin/python benchmarks/models_compare.py                 # both models, 1,000 dev photos
    .venv/bin/python benchmarks/models_compare.py --photos 200 --runs 3 --no-write   # quick look

For each model, in a temporary folder:
* `xmodal index` of the first N Flickr8k dev photos (500 x 375 JPEGs, as the dataset ships them) into a
  fresh library, timed end to end as a new process (model load included), and again as the median of
  `--runs` further runs into fresh libraries: images/s;
* disk per photo: the library folder's bytes (vectors, patch tokens, SQLite, FAISS) over N;
* a text query: cold, `xmodal search QUERY --json` as a fresh process (median of `--runs`, after one
  unmeasured run), and warm, `SearchEngine.search_text` in one process with the model's own reranker (median
  over 50 dev captions, after 5 warm-up queries);
* the stages of a text query (engine.eval.speed): the torch encoder, and the model's own reranker on a top 32
  (the issue's budget: <= 30 ms) on torch and as a search runs it (ONNX Runtime; benchmarks/rerank_budget.py
  breaks it down);
* the wheels: the main wheel (the lite model inside) and the companion wheel xmodal-base (base's heads and
  reranker), built with `pip wheel --no-deps`.

Dev recall is not measured here: it comes from the training runs (benchmarks/base_full.json,
benchmarks/base_rerank_seeds.json, benchmarks/lite_rerank_matcher_seeds.json). Results go to benchmarks/models_compare.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_latency import DATA, XMODAL, child_env, dev_photos, measure, timed  # noqa: E402

from xmodal.engine.eval.machine import cpu_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "models_compare.json"
QUERY = "a dog jumping into a lake"


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def link_photos(work: Path, n: int) -> Path:
    photos = work / "photos"
    photos.mkdir()
    for name in dev_photos(n):
        os.symlink(DATA / "images" / name, photos / name)
    return photos


def index_runs(model: str, photos: Path, work: Path, n: int, runs: int) -> tuple[dict, Path]:
    """Index `photos` 1 + runs times into fresh libraries -> (figures, the first library)."""
    walls = []
    for r in range(1 + runs):
        lib = work / f"lib-{model}-{r}"
        wall, rss, out = timed([XMODAL, "index", str(photos), "--library", str(lib), "--model", model, "--json"])
        report = json.loads(out)
        if report.get("indexed") != n:
            raise SystemExit(f"{model}: indexed {report.get('indexed')} of {n} photos")
        walls.append(wall)
        print(f"{model} index run {r}: {wall:.1f}s", file=sys.stderr)
    median = statistics.median(walls[1:] or walls)
    first = work / f"lib-{model}-0"
    return {"first_run_s": round(walls[0], 1), "median_s": round(median, 1),
            "images_per_s": round(n / median, 1), "runs": len(walls) - 1,
            "disk_bytes_per_photo": round(folder_bytes(first) / n)}, first


def warm_queries(lib: Path, model: str, captions: list[str]) -> dict:
    """Median ms of a text query through SearchEngine with the model's own reranker, in this process."""
    from xmodal.engine.search.engine import SearchEngine

    with SearchEngine(lib, reranker="bundled") as engine:
        for c in captions[:5]:
            engine.search_text(c, k=10)
        times = []
        for c in captions[5:]:
            t = time.perf_counter()
            engine.search_text(c, k=10)
            times.append(time.perf_counter() - t)
    times.sort()
    return {"median_ms": round(1000 * statistics.median(times), 1),
            "p95_ms": round(1000 * times[int(0.95 * (len(times) - 1))], 1), "queries": len(times)}


def stages(lib: Path, model: str, captions: list[str]) -> dict:
    """The torch encoder on one text query and the model's own reranker on a top 32 (engine.eval.speed): on
    torch (`rerank32_ms`) and as a search runs it, on ONNX Runtime (`rerank32_search_ms`)."""
    from xmodal.engine.eval.speed import rerank_latencies, stage_latencies
    from xmodal.engine.rerank.session import load_scorer
    from xmodal.indexer.models.encoders import get_encoder
    from xmodal.indexer.models.towers import bundled_reranker
    from xmodal.indexer.storage.library import Library

    with Library(lib) as library:
        index = library.vector_index("images")
        vectors = index.reconstruct(index.ids())
    encoder = get_encoder(model)
    out = stage_latencies(encoder, captions, vectors)
    out["rerank32_search_ms"] = rerank_latencies(load_scorer(bundled_reranker(model)), encoder, captions, vectors,
                                                 32)["total_ms"]
    return out


def wheel_sizes(work: Path) -> dict:
    out = work / "wheels"
    for target in (REPO, REPO / "packaging" / "xmodal-base"):
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                        str(target)], check=True, stdout=subprocess.DEVNULL)
    sizes = {}
    for whl in out.glob("*.whl"):
        sizes["companion (xmodal-base)" if whl.name.startswith("xmodal_base") else "main (xmodal)"] = \
            round(whl.stat().st_size / 1e6, 1)
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--models", default="lite,base")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    captions = []
    wanted = dev_photos(args.photos)
    by_name = {}
    for line in (DATA / "captions.txt").read_text().splitlines()[1:]:
        name, _, caption = line.partition(",")
        by_name.setdefault(name, caption.strip())
    captions = [by_name[n] for n in wanted[:55]]
    result = {"cpu": cpu_name(), "cores": os.cpu_count(), "photos": args.photos, "load_start": os.getloadavg()[0],
              "date": time.strftime("%Y-%m-%d"), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        photos = link_photos(work, args.photos)
        for model in args.models.split(","):
            idx, lib = index_runs(model, photos, work, args.photos, args.runs)
            cold = measure(f"{model} cold search", [XMODAL, "search", QUERY, "--library", str(lib), "--json"],
                           args.runs, child_env())
            result["models"][model] = {"index": idx, "cold_search": cold, "warm_search": warm_queries(lib, model, captions),
                                       "stages": stages(lib, model, captions)}
            print(json.dumps({model: result["models"][model]}), file=sys.stderr)
        result["wheel_mb"] = wheel_sizes(work)
    result["load_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))
    if not args.no_write:
        OUT.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
