"""The bundled models side by side (issue 22): lite and base, measured in one run on this machine.

    .venv/bin/python benchmarks/models_compare.py                 # both models, 1,000 dev photos
    .venv/bin/python benchmarks/models_compare.py --photos 200 --runs 3 --no-write   # quick look
    .venv/bin/python benchmarks/models_compare.py --out benchmarks/models_compare_interleaved.json

For each model, in a temporary folder:
* `xmodal index` of the first N Flickr8k dev photos (500 x 375 JPEGs, as the dataset ships them) into a
  fresh library, timed end to end as a new process (model load included), and again as the median of
  `--runs` further runs into fresh libraries, the models taking turns in each round: images/s, and the
  pipeline's own images/s (its JSON report's seconds: start-up and model load left out, what a large
  collection sees); base's ratios to lite are medians of the per-round ratios;
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


def index_run(model: str, photos: Path, lib: Path, n: int) -> tuple[float, float]:
    """`xmodal index` of `photos` into a fresh library as a new process -> (wall seconds, the pipeline's own
    seconds from its JSON report: start-up and model load left out)."""
    wall, _, out = timed([XMODAL, "index", str(photos), "--library", str(lib), "--model", model, "--json"])
    report = json.loads(out)
    if report.get("indexed") != n:
        raise SystemExit(f"{model}: indexed {report.get('indexed')} of {n} photos")
    print(f"{model} index: {wall:.1f}s wall, {report['seconds']:.1f}s pipeline", file=sys.stderr)
    return wall, float(report["seconds"])


def index_rounds(models: list[str], photos: Path, work: Path, n: int, runs: int) -> dict:
    """Each model indexes `photos` 1 + runs times into fresh libraries, the models taking turns in every round
    (a machine that slows down mid-run slows them alike) -> {model: figures}; the first round is the cold one,
    the medians are over the others. With lite among the models, each figure's ratio to lite's is also the
    median of the per-round ratios."""
    walls = {m: [] for m in models}
    pipes = {m: [] for m in models}
    for r in range(1 + runs):
        for model in models:
            wall, pipe = index_run(model, photos, work / f"lib-{model}-{r}", n)
            walls[model].append(wall)
            pipes[model].append(pipe)
    out = {}
    for model in models:
        wall, pipe = (statistics.median(v[1:] or v) for v in (walls[model], pipes[model]))
        out[model] = {"first_run_s": round(walls[model][0], 1), "median_s": round(wall, 1),
                      "images_per_s": round(n / wall, 1), "pipeline_images_per_s": round(n / pipe, 1),
                      "runs": len(walls[model]) - 1, "walls_s": [round(w, 2) for w in walls[model]],
                      "pipelines_s": [round(p, 2) for p in pipes[model]],
                      "disk_bytes_per_photo": round(folder_bytes(work / f"lib-{model}-0") / n)}
        if "lite" in models and model != "lite":
            for key, series in (("of_lite", walls), ("pipeline_of_lite", pipes)):
                rounds = [a / b for a, b in zip(series["lite"], series[model])][1:] or [series["lite"][0] / series[model][0]]
                out[model][key] = round(statistics.median(rounds), 3)
    return out


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
    ap.add_argument("--out", type=Path, default=OUT, help="where the results go (default benchmarks/models_compare.json)")
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
        models = args.models.split(",")
        indexing = index_rounds(models, photos, work, args.photos, args.runs)
        for model in models:
            idx, lib = indexing[model], work / f"lib-{model}-0"
            cold = measure(f"{model} cold search", [XMODAL, "search", QUERY, "--library", str(lib), "--json"],
                           args.runs, child_env())
            result["models"][model] = {"index": idx, "cold_search": cold, "warm_search": warm_queries(lib, model, captions),
                                       "stages": stages(lib, model, captions)}
            print(json.dumps({model: result["models"][model]}), file=sys.stderr)
        result["wheel_mb"] = wheel_sizes(work)
    result["load_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))
    if not args.no_write:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
