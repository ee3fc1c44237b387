"""Indexing throughput of the local pipeline against `--engine ray` with 1 and 2 workers on this machine, and
the per-worker rate that plans a cluster (benchmarks/SCALE_PLAN.md).

    python benchmarks/ray_scaling.py [--n 400] [--shard-size 50] [--runs 2] [--json benchmarks/ray_scaling.json]
    python benchmarks/ray_scaling.py --clip-b32       # adds the ViT-B/32 forward rate to the JSON

`--clip-b32`: the CLIP ViT-B/32 image tower's forward rate on one core (what one CPU worker would do with it),
measured on a randomly initialised tower of ViT-B/32's architecture (the compute does not depend on the
weights; no checkpoint is downloaded), batch 16, median of 5 batches, beside the lite model's forward pass on
one core (ONNX Runtime, one lane) measured the same way in the same process.

Photos: the first N of the Flickr8k dev split, then of train past dev's 1,000 (224 x 224 JPEGs; timing only), copied to a temporary folder; the lite model,
patch tokens stored, as `xmodal index` does. Each run indexes them into a fresh library; the figure is the
median over runs. For Ray a local instance with as many CPUs as workers is started before the timed run (a
cluster is up already in real use); the timed run includes the workers' start and model load, and
`steady_img_s` is the rate between the first and the last shard merged (what a long run approaches).
Equal cores: the local pipeline uses both cores (2 decode threads, 2 ONNX Runtime lanes), Ray with 2 workers
one core each. The machine is shared with other engineers' jobs: its load average is recorded beside the
figures, which are noisy for it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from xmodal.engine.eval.machine import cpu_name  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"


def dev_photos(n: int, out: Path) -> Path:
    splits = FLICKR8K / "splits"  # timing inputs only: dev first, then train photos past dev's 1,000
    names = (splits / "dev.txt").read_text().split() + (splits / "train.txt").read_text().split()
    names = names[:n]
    folder = out / "photos"
    folder.mkdir()
    for name in names:
        shutil.copy(FLICKR8K / "images" / name, folder / name)
    return folder


def one_run(photos: Path, library: Path, engine: str, workers: int | None, shard_size: int) -> dict:
    from xmodal.indexer.api import index_folders

    marks: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    report = index_folders(library, [photos], model="lite", engine=engine, workers=workers, shard_size=shard_size,
                           progress=lambda done, total: marks.append((time.perf_counter(), done)))
    seconds = time.perf_counter() - t0
    moving = [(t, d) for t, d in marks if d > 0]
    steady = None
    if len(moving) >= 2 and moving[-1][0] > moving[0][0]:
        steady = (moving[-1][1] - moving[0][1]) / (moving[-1][0] - moving[0][0])
    return {"images": report.indexed, "seconds": seconds, "img_s": report.indexed / seconds, "steady_img_s": steady}


def measure(photos: Path, tmp: Path, engine: str, workers: int | None, runs: int, shard_size: int) -> dict:
    import ray

    results = []
    for r in range(runs):
        if engine == "ray":
            ray.init(address="local", num_cpus=workers, include_dashboard=False, configure_logging=False, log_to_driver=False)
        try:
            results.append(one_run(photos, tmp / f"lib-{engine}-{workers}-{r}", engine, workers, shard_size))
        finally:
            if engine == "ray":
                ray.shutdown()
    steady = [x["steady_img_s"] for x in results if x["steady_img_s"]]
    return {"engine": engine, "workers": workers, "runs": runs, "images": results[0]["images"],
            "img_s": round(statistics.median(x["img_s"] for x in results), 1),
            "steady_img_s": round(statistics.median(steady), 1) if steady else None,
            "seconds": round(statistics.median(x["seconds"] for x in results), 2),
            "all_img_s": [round(x["img_s"], 1) for x in results]}


def forward_rates(batch: int = 16, batches: int = 5) -> dict:
    """Forward passes on one core: CLIP ViT-B/32's image tower (random weights) and the lite image path."""
    import numpy as np
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from xmodal.indexer.models.encoders import get_encoder

    torch.set_num_threads(1)
    config = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              image_size=224, patch_size=32, projection_dim=512)
    clip = CLIPVisionModelWithProjection(config).eval()
    pixels = torch.randn(batch, 3, 224, 224)
    lite = get_encoder("lite")
    images = np.random.default_rng(0).integers(0, 255, (batch, 224, 224, 3), dtype=np.uint8)

    def timed(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(batches):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return round(batch / statistics.median(times), 1)

    with torch.inference_mode():
        clip_rate = timed(lambda: clip(pixel_values=pixels))
    lite_rate = timed(lambda: lite.onnx(images, lane=0)) if lite.onnx is not None else None
    return {"clip_vit_b32_forward_img_s_one_core": clip_rate, "lite_forward_img_s_one_core": lite_rate,
            "clip_vit_b32_over_lite_cost": round(lite_rate / clip_rate, 1) if lite_rate else None,
            "batch": batch, "load_average": [round(x, 1) for x in os.getloadavg()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--shard-size", type=int, default=50)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "ray_scaling.json"))
    ap.add_argument("--clip-b32", action="store_true", help="measure the forward rates only, added to --json")
    args = ap.parse_args()
    if args.clip_b32:
        path = Path(args.json)
        out = json.loads(path.read_text()) if path.exists() else {}
        out["forward_one_core"] = forward_rates()
        print(json.dumps(out["forward_one_core"], indent=2))
        path.write_text(json.dumps(out, indent=2) + "\n")
        return
    from xmodal.indexer.models.encoders import get_encoder

    get_encoder("lite").encode_images([])  # the driver's model loaded before any timing
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = dev_photos(args.n, tmp)
        rows = [measure(photos, tmp, "local", None, args.runs, args.shard_size),
                measure(photos, tmp, "ray", 1, args.runs, args.shard_size),
                measure(photos, tmp, "ray", 2, args.runs, args.shard_size)]
    local, ray1, ray2 = rows
    out = {
        "benchmark": "ray_scaling", "date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cores": os.cpu_count(),
        "machine": ("quiet: nothing else ran (load average recorded)" if max(load_before[0], os.getloadavg()[0]) < 1.5 else
                    "shared with other jobs during the run (load average recorded): figures are noisy"),
        "load_average_before": [round(x, 1) for x in load_before],
        "load_average_after": [round(x, 1) for x in os.getloadavg()],
        "photos": f"first {args.n} of the Flickr8k dev split then train, 224x224 JPEG", "model": "lite (ONNX Runtime, CPU)",
        "shard_size": args.shard_size, "results": rows,
        "ray2_overhead_vs_local": round(1 - ray2["img_s"] / local["img_s"], 3),
        "ray2_steady_overhead_vs_local": (round(1 - ray2["steady_img_s"] / local["steady_img_s"], 3)
                                          if ray2["steady_img_s"] and local["steady_img_s"] else None),
        "per_worker_img_s": ray1["steady_img_s"] or ray1["img_s"],
        "ray_2_over_1_workers": round(ray2["img_s"] / ray1["img_s"], 2),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
