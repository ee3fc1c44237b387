"""The lite image tower on every runtime available, side by side in one run, next to the end-to-end
indexing rate on each ONNX Runtime graph: the limit the indexer is measured against is the fastest of them.

    python benchmarks/runtimes.py [--batch 16] [--repeats 7] [--photos DIR] [--copies 10] [--dev] [--json]
                                  [--variants s8,u8u8,s8-reduce-range]

* PyTorch eager (NCHW) and channels-last: pixels -> L2-normalised embedding.
* ONNX Runtime, float32 and int8 (indexer.onnx_int8: static quantisation calibrated on the shipped sample
  photos, in the first variant that stays close to float on this CPU; where none does, int8 is reported
  unavailable here and only float32 runs), each run on the graph `xmodal index` uses (uint8 pixels ->
  embedding and patch maps) two ways:
  one session with as many intra-op threads as torch uses, and one single-threaded session per core running
  batches concurrently ("lanes", what indexing uses).
* For each ONNX graph: indexing `--photos` end to end (decode, resize, embed, patch tokens, store; median of
  3 runs into fresh libraries, encoder warmed up), and with `--dev` the Flickr8k dev R@1 (int8 counts as a
  runtime only if it costs at most 0.5 points in each direction). The photos are indexed as `--copies`
  copies of each (default 10: the 100 Flickr8k originals make 1,000 photos), each copy made distinct by a
  JPEG comment segment (same pixels, same decoding work, its own hash), so that the rate is the steady one
  of a real collection rather than one dominated by filling and draining the pipeline (about 0.3 s a run).
* The forward rates are measured again after the indexing runs, and the higher of the two counts: the
  limit is never understated when the machine's speed drifts during the run.

* With `--variants`, each named int8 variant is also made as it is (kept or not) and measured on its own:
  cosine to float on the calibration inputs (median, worst), forward rates, and with `--dev` its dev R@1;
  no indexing runs, and it never counts as the fastest.

Forward inputs are real photos (the sample photos, preprocessed like `xmodal index` does). Rates are
images/s, medians of the repeats, after a warm-up. Embeddings are compared with eager's.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"


class Embed(torch.nn.Module):
    """Pixels (B, 3, 224, 224) -> unit embeddings (B, D): the lite model's image path."""

    def __init__(self, lite):
        super().__init__()
        self.lite = lite

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.lite.encode_image(pixels)


def cpu() -> dict:
    """The CPU's model name and whether it has VNNI (int8 kernels differ with it), from /proc/cpuinfo."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"cpu": platform.processor() or platform.machine()}
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name", platform.machine()),
            "vnni": sorted(flags & {"avx512_vnni", "avx_vnni"}), "avx2": "avx2" in flags}


def rate(fn, x, batch: int, repeats: int) -> float:
    fn(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def replicate(photos: Path, copies: int, dest: Path) -> Path:
    """`copies` distinct copies of each JPEG in `photos` under `dest`: a comment segment (FF FE) after the
    start-of-image marker names the copy, so every file has its own hash and identical pixels. Other files
    are copied once."""
    for k in range(copies):
        for p in sorted(x for x in photos.iterdir() if x.is_file()):
            data = p.read_bytes()
            if data[:2] != b"\xff\xd8":
                if k == 0:
                    (dest / p.name).write_bytes(data)
                continue
            note = f"xmodal benchmark copy {k}".encode()
            (dest / f"{k}_{p.name}").write_bytes(data[:2] + b"\xff\xfe" + struct.pack(">H", len(note) + 2) + note + data[2:])
    return dest


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--photos", type=Path, default=FLICKR8K / "originals", help="photos to index end to end")
    ap.add_argument("--copies", type=int, default=10, help="index this many distinct copies of each photo")
    ap.add_argument("--dev", action="store_true", help="also measure Flickr8k dev R@1 on each ONNX graph")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--variants", default="", help="also measure these int8 variants, comma-separated "
                    "(s8, u8u8, s8-reduce-range), whether this CPU would keep them or not")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    from xmodal.indexer.ingest.decode import read_image
    from xmodal.indexer.models.encoders import get_encoder

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
               "torch_threads": torch.get_num_threads(), "onnxruntime": ort.__version__, **cpu()}
        out["eager_img_s"] = round(rate(eager, x, args.batch, args.repeats), 1)
        out["channels_last_img_s"] = round(rate(nhwc, x_nhwc, args.batch, args.repeats), 1)
        out["channels_last_max_abs_diff"] = float(np.abs(nhwc(x_nhwc).numpy() - ref).max())
    if enc.onnx is None:
        raise SystemExit("the lite encoder has no ONNX Runtime path (onnxruntime missing, or XMODAL_IMAGE_RUNTIME set)")
    from xmodal.engine.eval.speed import index_rate, onnx_forward_rates
    from xmodal.indexer.models.onnx_image import OnnxImagePath
    from xmodal.indexer.models import onnx_int8

    graphs = {"onnxruntime": enc.onnx}
    try:
        path = onnx_int8.quantized(enc.onnx.path, enc.preprocess)
        graphs["int8"] = OnnxImagePath(path, kind="int8")
        out["int8_variant"] = onnx_int8.variant_of(path)
    except onnx_int8.QuantizationError as e:  # no variant stays close to float on this CPU: float32 only
        out["int8_unavailable"] = str(e)
    calib = onnx_int8.calibration_pixels(enc.preprocess)
    calib_ref = onnx_int8.embed(enc.onnx.path, calib)
    extra = [v for v in (*onnx_int8.VARIANTS, onnx_int8.REDUCE_RANGE) if v.name in args.variants.split(",")]
    vtmp = tempfile.TemporaryDirectory(dir=enc.onnx.path.parent)
    if extra:
        made = onnx_int8.Quantiser(enc.onnx.path, enc.preprocess, Path(vtmp.name))
        for v in extra:
            graphs[f"int8_{v.name}"] = OnnxImagePath(made.make(v), kind="int8")
    for name, graph in graphs.items():
        cosine = (calib_ref * onnx_int8.embed(graph.path, calib)).sum(1)
        out[f"{name}_calibration_cosine"] = {"median": round(float(np.median(cosine)), 4),
                                             "worst": round(float(cosine.min()), 4)}
    out["lanes"] = enc.onnx.lanes
    dataset = None
    if args.dev:
        from xmodal.engine.eval.datasets import load_dataset

        dataset = load_dataset(str(FLICKR8K), str(FLICKR8K / "splits" / "dev.txt"))
    tmp = tempfile.TemporaryDirectory()
    corpus = replicate(args.photos, args.copies, Path(tmp.name)) if args.copies > 1 else args.photos
    out["indexed_photos"] = sum(1 for p in corpus.iterdir() if p.is_file())
    for name, graph in graphs.items():
        enc.onnx = graph  # the encoder's image path now runs this graph (lanes included)
        before = onnx_forward_rates(enc, args.batch, args.repeats)
        got, _ = graph(enc.preprocess.array(images))
        out[f"{name}_max_abs_diff"] = float(np.abs(got - ref).max())
        out[f"{name}_min_cosine"] = float((got * ref).sum(1).min())
        if name in ("onnxruntime", "int8"):  # the variants measured besides run no indexing
            out[f"{name}_index_img_s"] = round(index_rate(enc, corpus, runs=3)[0], 1)
        after = onnx_forward_rates(enc, args.batch, args.repeats)
        out[f"{name}_img_s"] = round(max(before["session"], after["session"]), 1)
        out[f"{name}_lanes_img_s"] = round(max(before["lanes"], after["lanes"]), 1)
        if dataset is not None:
            from xmodal.engine.eval.bench import recall_benchmark

            rep = recall_benchmark(dataset, enc)
            out[f"{name}_dev_r1"] = {"t2i": rep["t2i"]["R@1"], "i2t": rep["i2t"]["R@1"]}
    enc.onnx = graphs["onnxruntime"]
    tmp.cleanup()
    vtmp.cleanup()
    if dataset is not None:
        for name in (n for n in graphs if n.startswith("int8")):
            cost = max(out["onnxruntime_dev_r1"][d] - out[f"{name}_dev_r1"][d] for d in ("t2i", "i2t"))
            out[f"{name}_dev_r1_cost"] = round(cost, 2)
        if "int8" in graphs:
            out["int8_qualifies"] = out["int8_dev_r1_cost"] <= 0.5
    keys = ["eager", "channels_last", "onnxruntime", "onnxruntime_lanes"]
    if "int8" in graphs and out.get("int8_qualifies", True):  # unmeasured: counted, so the limit is never understated
        keys += ["int8", "int8_lanes"]
    best = max(keys, key=lambda k: out[f"{k}_img_s"])
    out["fastest"] = best
    out["fastest_img_s"] = out[f"{best}_img_s"]
    for name in (n for n in ("onnxruntime", "int8") if n in graphs):
        out[f"{name}_index_vs_fastest"] = round(out[f"{name}_index_img_s"] / out["fastest_img_s"], 3)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"batch {args.batch}, {out['machine']}: eager {out['eager_img_s']} img/s, channels-last "
              f"{out['channels_last_img_s']}; ONNX Runtime float32 {out['onnxruntime_img_s']} "
              f"({out['lanes']} lanes {out['onnxruntime_lanes_img_s']}), "
              + (f"int8 ({out['int8_variant']}) {out['int8_img_s']} (lanes {out['int8_lanes_img_s']})"
                 if "int8" in graphs else f"int8 unavailable on this CPU ({out['int8_unavailable']})")
              + f"; fastest: {best}. Indexing end to end: float32 {out['onnxruntime_index_img_s']}"
              + (f", int8 {out['int8_index_img_s']}" if "int8" in graphs else "") + " img/s")
    return out


if __name__ == "__main__":
    main()
