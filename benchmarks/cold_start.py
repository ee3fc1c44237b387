"""Cold start of a search's text session, the part of a cold `xmodal search` that grows with the text tower
(issue 22: base's cold search within lite's plus 0.3 s).

    .venv/bin/python benchmarks/cold_start.py              # lite and base (when installed), 7 rounds
    .venv/bin/python benchmarks/cold_start.py --rounds 3 --no-write

For each bundled model, three ways to open its text graph, each in a fresh process, the ways and models
taking turns in every round (a machine that slows down mid-run slows them alike):

* before: the graph as torch exports it, optimised by ONNX Runtime at every load, weights prepacked (how
  every search opened it until 2026-12-01);
* saved optimised, prepacked: the graph as `onnx_text.export` now caches it (fused once, at export), loaded
  without optimising again: what a server and `xmodal search --queries` open;
* saved optimised, one shot: the same inside `onnx_runtime.one_shot()`, no prepacking: what `xmodal search
  QUERY` opens.

Each child reports the session's load time, its first query (a 7-token caption; what a cold search pays) and a
second query (what later queries pay); medians over the rounds, and each way's first-query embedding's largest
difference from the before graph's. Results: benchmarks/cold_start.json.
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

HERE = Path(__file__).resolve().parent

CHILD = r"""
import contextlib, json, sys, time
import numpy as np
from xmodal.indexer.models.onnx_runtime import one_shot, session

path, optimize, quick, out = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1", sys.argv[4]
t0 = time.perf_counter()
with one_shot() if quick else contextlib.nullcontext():
    s = session(path, 2, optimize=optimize, spin=False)
t1 = time.perf_counter()
ids = np.array([[0, 1037, 3899, 8660, 2046, 1037, 2]], np.int64)
feed = {"ids": ids, "mask": np.ones_like(ids)}
emb = s.run(None, feed)[0]
t2 = time.perf_counter()
s.run(None, feed)
t3 = time.perf_counter()
np.save(out, emb)
print(json.dumps({"load": t1 - t0, "first": t2 - t1, "second": t3 - t2}))
"""

WAYS = {  # name: (which graph, optimise at load, one shot)
    "before: optimised at load, prepacked": ("raw", True, False),
    "saved optimised, prepacked (server, --queries)": ("saved", False, False),
    "saved optimised, one shot (xmodal search QUERY)": ("saved", False, True),
}


def graphs(model: str, folder: Path) -> dict[str, str]:
    """The model's text graph as torch exports it (in `folder`) and as the cache keeps it."""
    from xmodal.indexer.models import onnx_text
    from xmodal.indexer.models.encoders import get_encoder
    from xmodal.indexer.models.onnx_runtime import save_external

    enc = get_encoder(model)
    raw = onnx_text.export_raw(enc.model, folder / f"{model}-raw-inline.onnx")
    external = save_external(raw, folder / f"{model}-raw.onnx")  # weights beside it, as the cache kept them
    raw.unlink()
    return {"raw": str(external), "saved": str(onnx_text.export(enc.model, enc._fingerprint))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "cold_start.json")
    args = ap.parse_args()

    import numpy as np

    from xmodal.engine.eval.machine import cpu_name
    from xmodal.indexer.models.towers import bundled_reranker

    models = ["lite"] + (["base"] if bundled_reranker("base") is not None else [])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = {m: graphs(m, folder) for m in models}
        runs = {m: {w: [] for w in WAYS} for m in models}
        diffs = {m: {} for m in models}
        load_start = os.getloadavg()[0]
        for r in range(args.rounds):
            for m in models:
                for way, (graph, optimize, quick) in WAYS.items():
                    out = folder / f"{m}-{list(WAYS).index(way)}.npy"
                    child = subprocess.run([sys.executable, "-c", CHILD, paths[m][graph], str(int(optimize)),
                                            str(int(quick)), str(out)], capture_output=True, text=True, timeout=600)
                    if child.returncode != 0:
                        raise SystemExit(child.stderr)
                    runs[m][way].append(json.loads(child.stdout.strip().splitlines()[-1]))
                    ref = np.load(folder / f"{m}-0.npy")
                    diffs[m][way] = float(np.abs(np.load(out) - ref).max())
            print(f"round {r + 1}: " + "; ".join(
                f"{m} " + " / ".join(f"{runs[m][w][-1]['load'] + runs[m][w][-1]['first']:.2f}" for w in WAYS)
                for m in models), flush=True)
        report = {"cpu": cpu_name(), "cores": os.cpu_count(), "rounds": args.rounds,
                  "date": time.strftime("%Y-%m-%d"), "load_start": load_start, "load_end": os.getloadavg()[0],
                  "data_mb": {m: round(Path(paths[m]["saved"] + ".data").stat().st_size / 2**20, 1) for m in models},
                  "models": {}}
        for m in models:
            report["models"][m] = {}
            for way in WAYS:
                rows = runs[m][way]
                med = {k: round(statistics.median(x[k] for x in rows) * 1000, 1) for k in ("load", "first", "second")}
                med["load_and_first"] = round(statistics.median((x["load"] + x["first"]) for x in rows) * 1000, 1)
                med["max_abs_diff_vs_before"] = diffs[m][way]
                report["models"][m][way] = med
                print(f"{m:5s} {way:50s} load {med['load']:7.1f} ms, first query {med['first']:6.1f}, "
                      f"second {med['second']:6.1f}, load + first {med['load_and_first']:7.1f}")
    if not args.no_write:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
