"""Mean and spread over seeds of a reranker's dev figures, from the runs that made them.

    python benchmarks/rerank_seeds.py OUT.json --what TEXT RUN [RUN ...]

Each RUN is what `xmodal train rerank ... --json` printed (a .json file), or a reranker checkpoint (.pt: the dev
figures it carries, for a shipped checkpoint whose run output was not kept). Every run reports the dual encoder
alone and the fused ranking of its top K = 8, 16, 32 on Flickr8k dev (weights chosen on dev, as shipped); OUT
gets mean, sd and the values of each, in the runs' order. Reads no data and trains nothing.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def dev_figures(run: Path) -> dict:
    """{"dual": {"t2i": {...}, "i2t": {...}}, "K=16": {...}, ...} of one run output or checkpoint."""
    if run.suffix == ".pt":
        import torch

        dev = torch.load(run, map_location="cpu", weights_only=True)["dev"]
    else:
        dev = json.loads(run.read_text())["dev"]
    out = {"dual": {d: dev["dual"][d] for d in ("t2i", "i2t")}}
    for k, row in dev["K"].items():
        out[f"K={k}"] = {d: row[d] for d in ("t2i", "i2t")}
        out[f"K={k}"]["alpha"], out[f"K={k}"]["beta"] = row.get("alpha"), row.get("beta")
    return out


def summarise(figures: list[dict]) -> dict:
    """Per stage, direction and metric: mean, sd (n > 1) and the values, rounded to 2 places."""
    out = {}
    for stage in figures[0]:
        for d in ("t2i", "i2t"):
            for metric in ("R@1", "R@5", "R@10"):
                values = [round(f[stage][d][metric], 2) for f in figures]
                row = {"mean": round(statistics.mean(values), 2), "values": values}
                if len(values) > 1:
                    row["sd"] = round(statistics.stdev(values), 2)
                out.setdefault(stage, {}).setdefault(d, {})[metric] = row
        if stage != "dual":
            out[stage]["weights"] = [{"alpha": f[stage]["alpha"], "beta": f[stage]["beta"]} for f in figures]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--what", required=True, help="what the runs are (written to OUT)")
    ap.add_argument("--command", action="append", default=[], help="the commands that made the runs")
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    figures = [dev_figures(r) for r in args.runs]
    doc = {"what": args.what, "commands": args.command, "runs": [r.name for r in args.runs],
           "split": "Flickr8k dev (1,000 photos, 5,000 captions); the test split never used",
           "summary": summarise(figures)}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    for stage, row in doc["summary"].items():
        print(f"{stage:5s} t2i R@1 {row['t2i']['R@1']['mean']:.2f} +- {row['t2i']['R@1'].get('sd', 0):.2f}   "
              f"i2t R@1 {row['i2t']['R@1']['mean']:.2f} +- {row['i2t']['R@1'].get('sd', 0):.2f}")


if __name__ == "__main__":
    main()
