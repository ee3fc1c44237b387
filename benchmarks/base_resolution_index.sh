#!/bin/bash
# What base's photos at other sizes cost `xmodal index` (benchmarks/base_resolution.py measures the recall):
# 500 Flickr8k dev photos indexed as a new process, --no-patches (the reranker's tokens are measured apart),
# lite, base at its own size and base with its heads' preprocessing set to each of SIZES (default 320), taking
# turns over three rounds after one warm-up each (ONNX graphs exported once). The heads are the installed
# companion's base-align.pt (make install-base, an editable install); each resized copy replaces it during its
# runs and the original is put back on exit. Writes benchmarks/base_resolution_index.json (OUT=... elsewhere).
#
#     bash benchmarks/base_resolution_index.sh
#     SIZES="280 288 320" OUT=/tmp/index_sizes.json bash benchmarks/base_resolution_index.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
XMODAL="$(dirname "$PY")/xmodal"
HEADS=$("$PY" -c "from xmodal.indexer.resources import data_file; print(data_file('base-align.pt'))")
SIZES=${SIZES:-320}
OUT=${OUT:-benchmarks/base_resolution_index.json}
OWN=$("$PY" -c "import torch, sys; print(torch.load(sys.argv[1], map_location='cpu', weights_only=False)['preprocess']['size'])" "$HEADS")
WORK=$(mktemp -d)
cp "$HEADS" "$WORK/base-align-$OWN.pt"
trap 'cp "$WORK/base-align-$OWN.pt" "$HEADS"; rm -rf "$WORK"' EXIT
"$PY" - "$WORK" "$OWN" $SIZES <<'PY'
import sys, torch
work, own, sizes = sys.argv[1], sys.argv[2], sys.argv[3:]
for size in sizes:
    ck = torch.load(f"{work}/base-align-{own}.pt", map_location="cpu", weights_only=False)
    ck["preprocess"]["size"] = int(size)
    torch.save(ck, f"{work}/base-align-{size}.pt")
PY
mkdir -p "$WORK/photos"
head -500 ../shared/data/flickr8k/splits/dev.txt | while read -r f; do
  ln -sf "$(realpath ../shared/data/flickr8k/images)/$f" "$WORK/photos/$f"; done
run() {  # model size round -> one JSON line
  if [ "$1" = base ]; then cp "$WORK/base-align-$2.pt" "$HEADS"; fi
  rm -rf "$WORK/lib"
  local s e
  s=$(date +%s.%N)
  "$XMODAL" index "$WORK/photos" --library "$WORK/lib" --model "$1" --no-patches --json > /dev/null 2> "$WORK/err"
  e=$(date +%s.%N)
  echo "{\"model\": \"$1\", \"size\": $2, \"round\": \"$3\", \"seconds\": $(echo "$e - $s" | bc)}" >> "$WORK/runs.jsonl"
}
for z in $SIZES; do run base "$z" warm; done; run base "$OWN" warm; run lite 224 warm
for i in 1 2 3; do run lite 224 "$i"; run base "$OWN" "$i"; for z in $SIZES; do run base "$z" "$i"; done; done
"$PY" - "$WORK/runs.jsonl" "$OUT" <<'PY'
import json, statistics, sys
from xmodal.engine.eval.machine import cpu_name
runs = [json.loads(line) for line in open(sys.argv[1])]
med = {}
for key in dict.fromkeys((r["model"], r["size"]) for r in runs):
    secs = [r["seconds"] for r in runs if (r["model"], r["size"]) == key and r["round"] != "warm"]
    med[f"{key[0]} {key[1]} px"] = {"median_s": round(statistics.median(secs), 2), "images_per_s": round(500 / statistics.median(secs), 1)}
lite = med["lite 224 px"]["images_per_s"]
for v in med.values():
    v["of_lite"] = round(v["images_per_s"] / lite, 3)
out = {"machine": cpu_name(), "photos": 500, "what": "xmodal index --no-patches, a new process each, median of 3 rounds",
       "medians": med, "runs": runs}
open(sys.argv[2], "w").write(json.dumps(out, indent=1) + "\n")
print(json.dumps(med))
PY
