"""The lite image tower + head on the fastest runtime available: PyTorch eager (NCHW), channels-last, and
ONNX Runtime, side by side in one run, with the embeddings compared to eager's.

    python benchmarks/runtimes.py [--batch 16] [--repeats 7] [--json]

The model (pixels -> L2-normalised embedding) is exported with torch.onnx (opset 17) to a temporary file
and run by ONNX Runtime's CPU provider with as many intra-op threads as torch uses. Inputs are real photos
(the sample photos, preprocessed like `xmodal index` does). Rates are images/s, medians of the repeats,
after a warm-up. Needs `pip install -e .[bench]` (onnx, onnxruntime).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


class Embed(torch.nn.Module):
    """Pixels (B, 3, 224, 224) -> unit embeddings (B, D): the lite model's image path."""

    def __init__(self, lite):
        super().__init__()
        self.lite = lite

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.lite.encode_image(pixels)


def rate(fn, x, batch: int, repeats: int) -> float:
    fn(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    from indexer.decode import read_image
    from indexer.encoders import get_encoder

    enc = get_encoder("lite")
    photos = sorted(p for p in (REPO / "data" / "samples").iterdir() if p.suffix in (".jpg", ".png"))
    images = [read_image(str(p)).image for p in photos]
    images = (images * (args.batch // len(images) + 1))[: args.batch]
    x = enc.preprocess(images).contiguous()  # (B, 3, 224, 224) NCHW
    eager = Embed(copy.deepcopy(enc.model).to(memory_format=torch.contiguous_format)).eval()
    nhwc = Embed(copy.deepcopy(enc.model).to(memory_format=torch.channels_last)).eval()
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = eager(x).numpy()
        out = {"batch": args.batch, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "torch_threads": torch.get_num_threads(), "onnxruntime": ort.__version__}
        out["eager_img_s"] = round(rate(eager, x, args.batch, args.repeats), 1)
        out["channels_last_img_s"] = round(rate(nhwc, x_nhwc, args.batch, args.repeats), 1)
        out["channels_last_max_abs_diff"] = float(np.abs(nhwc(x_nhwc).numpy() - ref).max())
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on TF-style SAME padding (shapes are fixed: 224)
        path = Path(tmp) / "lite-image.onnx"
        torch.onnx.export(eager, (x,), str(path), input_names=["pixels"], output_names=["embedding"],
                          dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17,
                          dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        xn = x.numpy()
        run = lambda a: session.run(None, {"pixels": a})[0]  # noqa: E731
        out["onnxruntime_img_s"] = round(rate(run, xn, args.batch, args.repeats), 1)
        got = run(xn)
        out["onnxruntime_max_abs_diff"] = float(np.abs(got - ref).max())
        out["onnxruntime_min_cosine"] = float((got * ref).sum(1).min())
    best = max(("eager", "channels_last", "onnxruntime"), key=lambda k: out[f"{k}_img_s"])
    out["fastest"] = best
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"batch {args.batch}, {out['machine']}: eager {out['eager_img_s']} img/s, channels-last "
              f"{out['channels_last_img_s']}, ONNX Runtime {out['onnxruntime_img_s']} (max |diff| "
              f"{out['onnxruntime_max_abs_diff']:.2e}); fastest: {best}")
    return out


if __name__ == "__main__":
    main()
