"""Warm query latency with ONNX Runtime's threads sleeping after each run (xmodal's query sessions since
2026-12-01: `onnx_runtime.session(..., spin=False)`) against ORT's default, threads spinning for the next
run, side by side in one run on this machine.

    .venv/bin/python benchmarks/query_spinning.py              # -> benchmarks/query_spinning.json
    .venv/bin/python benchmarks/query_spinning.py --photos 100 --rounds 1 --no-write

A query runs ONNX Runtime (the text or image encoder, then the reranker's matcher) between numpy and FAISS
work (the search, the hubness priors, the exemplar term). On a 2-core machine, threads left spinning after
a run take the cores that work needs. Lite and base libraries of the first N Flickr8k dev photos are built
in a temporary folder; then, for `--rounds` rounds, a fresh process per (model, setting) alternately runs
`SearchEngine.search_text` (reranked with the model's own reranker) over 55 dev captions (every 7th) and
`search_image` over 15 library photos, each after 5 unmeasured queries, and reports its medians. Figures: the
median over rounds of each process's median, and the ratio spinning / sleeping. Needs the Flickr8k data at
../shared/data/flickr8k and `--photos` >= 20; base (in the default `--models`) needs `make install-base`.
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
from cli_latency import DATA, XMODAL, child_env, dev_photos  # noqa: E402

from xmodal.engine.eval.machine import machine  # noqa: E402

OUT = Path(__file__).resolve().parent / "query_spinning.json"
SETTINGS = ("sleeping (xmodal)", "spinning (ORT default)")


def child(lib: str, spin: bool) -> None:
    """One measuring process: print {"text_ms", "image_ms"} medians."""
    import xmodal.engine.rerank.session as rerank_session
    import xmodal.indexer.models.onnx_runtime as onnx_runtime

    if spin:  # every query session as ORT makes it by default
        plain = onnx_runtime.session

        def spinning(path, threads, optimize=True, spin=True):
            return plain(path, threads, optimize, True)

        onnx_runtime.session = rerank_session.session = spinning
    from xmodal.engine.eval.datasets import load_captions_csv
    from xmodal.engine.search.engine import SearchEngine

    captions = list(load_captions_csv(DATA, DATA / "splits" / "dev.txt").captions)[::7][:60]
    photos = sorted(Path(lib).parent.joinpath("photos").iterdir())[:20]
    out = {}
    with SearchEngine(lib, reranker="bundled") as engine:
        for name, run, items in (("text_ms", engine.search_text, captions), ("image_ms", engine.search_image, photos)):
            for q in items[:5]:
                run(q, k=10)
            times = []
            for q in items[5:]:
                t = time.perf_counter()
                run(q, k=10)
                times.append(time.perf_counter() - t)
            out[name] = 1000 * statistics.median(times)
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", nargs="+", default=["lite", "base"])
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--child", nargs=2, metavar=("LIBRARY", "SPIN"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child[0], args.child[1] == "1")
    if args.photos < 20:
        p.error("--photos must be at least 20 (5 warm-up and 15 measured photo queries)")
    report = {"benchmark": "query_spinning", "date": time.strftime("%Y-%m-%d"), **machine(),
              "load_average_before": [round(x, 2) for x in os.getloadavg()], "photos": args.photos,
              "rounds": args.rounds, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "photos").mkdir()
        for name in dev_photos(args.photos):
            (work / "photos" / name).symlink_to(DATA / "images" / name)
        runs: dict = {m: {s: [] for s in SETTINGS} for m in args.models}
        for model in args.models:
            subprocess.run([XMODAL, "index", str(work / "photos"), "--library", str(work / model), "--model", model,
                            "--json"], check=True, capture_output=True, env=child_env())
        for _ in range(args.rounds):
            for model in args.models:
                for spin, setting in enumerate(SETTINGS):
                    proc = subprocess.run([sys.executable, __file__, "--child", str(work / model), str(spin)],
                                          check=True, capture_output=True, text=True, env=child_env())
                    runs[model][setting].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for model, by_setting in runs.items():
        row = {}
        for setting, results in by_setting.items():
            row[setting] = {k: round(statistics.median(r[k] for r in results), 1) for k in ("text_ms", "image_ms")}
            row[setting]["rounds"] = [{k: round(v, 1) for k, v in r.items()} for r in results]
        slow, fast = row[SETTINGS[1]], row[SETTINGS[0]]
        row["spinning / sleeping"] = {k: round(slow[k] / fast[k], 2) for k in ("text_ms", "image_ms")}
        report["models"][model] = row
        print(f"{model:5s} warm reranked text query {fast['text_ms']:.1f} ms sleeping, {slow['text_ms']:.1f} spinning; "
              f"photo query {fast['image_ms']:.1f} ms sleeping, {slow['image_ms']:.1f} spinning")
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if not args.no_write:
        OUT.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
