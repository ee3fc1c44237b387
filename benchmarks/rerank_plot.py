"""Plot dev R@1 against the rerank depth K from `xmodal bench recall ... --rerank --json` output.

    .venv/bin/xmodal bench recall ../shared/data/flickr8k --split ../shared/data/flickr8k/splits/dev.txt \\
        --rerank --rerank-k 8 --rerank-k 16 --rerank-k 32 --json > /tmp/rerank.json
    .venv/bin/python benchmarks/rerank_plot.py /tmp/rerank.json benchmarks/rerank_k.png

Needs matplotlib (`pip install -e .[bench]`).
"""
from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, out: str) -> None:
    rep = json.load(open(src))
    ks = sorted(int(k) for k in rep["rerank"])
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for direction, colour in (("t2i", "tab:blue"), ("i2t", "tab:orange")):
        ax.plot(ks, [rep["rerank"][str(k)][direction]["R@1"] for k in ks], "o-", color=colour,
                label=f"{direction} reranked")
        ax.axhline(rep[direction]["R@1"], color=colour, ls="--", lw=1, label=f"{direction} dual encoder")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("rerank depth K")
    ax.set_ylabel("R@1 (%)")
    ax.set_title("Flickr8k dev: cross-attention rerank of the lite top-K", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
