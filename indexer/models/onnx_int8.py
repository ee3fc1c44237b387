"""An int8 copy of the lite image path (`XMODAL_IMAGE_RUNTIME=int8`): ONNX Runtime static quantisation,
weights per channel (int8), activations per tensor (uint8), ranges calibrated with MinMax.

Calibration needs photos but must not need a dataset, so it uses the sample photos shipped in data/samples
with seeded crops and mirror images (56 inputs): on Flickr8k dev this costs 0.22 (t2i) and 0.40 (i2t) points
of R@1 against the float graph, inside the 0.5-point budget, while calibrating on 256 Flickr8k train photos
cost 0.0 / 0.1 (benchmarks/runtimes.py, benchmarks/NOTES.md). Quantising only the convolutions was far
worse (-5 points): the graph is quantised whole.

The quantised graph is made once next to the float one in the cache. Before it is kept, its embeddings of
the calibration inputs are compared with the float graph's: int8 kernels differ between CPUs (without
VNNI, uint8 x int8 products can saturate), so a CPU where they drift (`MIN_MEDIAN_COSINE`, `MIN_COSINE`)
keeps float32.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from xmodal.indexer.resources import samples_dir

logger = logging.getLogger(__name__)

SAMPLES = samples_dir()
#: int8 against float embeddings of the calibration inputs, median and worst. Measured here: 0.99+ and 0.92
#: (the worst is a crop of the Hubble deep field); saturating kernels give far less.
MIN_MEDIAN_COSINE, MIN_COSINE = 0.98, 0.85
VERSION = 1  # bump when the recipe changes: cached int8 graphs are then made again


class QuantizationError(Exception):
    pass


def calibration_pixels(preprocess, crops: int = 5, seed: int = 0) -> np.ndarray:
    """(N, 3, size, size) uint8: every sample photo, its mirror image, and `crops` seeded random crops
    (half to all of each side, half of them mirrored), preprocessed as the encoder does."""
    from PIL import ImageOps

    from xmodal.indexer.ingest.decode import read_image

    photos = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        raise QuantizationError(f"no sample photos to calibrate with in {SAMPLES}")
    rng = np.random.default_rng(seed)
    images = []
    for path in photos:
        im = read_image(str(path), target_size=preprocess.size).image
        w, h = im.size
        images += [im, ImageOps.mirror(im)]
        for _ in range(crops):
            s = rng.uniform(0.5, 1.0)
            cw, ch = int(w * s), int(h * s)
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = im.crop((x0, y0, x0 + cw, y0 + ch))
            images.append(ImageOps.mirror(crop) if rng.random() < 0.5 else crop)
    return np.ascontiguousarray(preprocess.array(images).transpose(0, 3, 1, 2))


def quantized(float_path: Path, preprocess, batch: int = 16) -> Path:
    """The int8 graph made from `float_path` (cached beside it), checked against it on this CPU."""
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = float_path.with_name(f"{float_path.stem}-int8-v{VERSION}.onnx")
    if out.exists():
        return out
    pixels = calibration_pixels(preprocess)

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([pixels[s:s + batch] for s in range(0, len(pixels), batch)])

        def get_next(self):
            b = next(self.batches, None)
            return None if b is None else {"pixels": b}

    logger.info("quantising the lite image path to int8 (once; calibration on %d sample inputs)", len(pixels))
    with tempfile.TemporaryDirectory(dir=float_path.parent) as tmp:
        pre, made = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(made), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        ref = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"]).run(None, {"pixels": pixels})[0]
        got = ort.InferenceSession(str(made), providers=["CPUExecutionProvider"]).run(None, {"pixels": pixels})[0]
        cosine = (ref * got).sum(1)
        median, worst = float(np.median(cosine)), float(cosine.min())
        if median < MIN_MEDIAN_COSINE or worst < MIN_COSINE:
            raise QuantizationError(f"int8 embeddings drift on this CPU (cosine to float: median {median:.3f}, "
                                    f"worst {worst:.3f}; needed {MIN_MEDIAN_COSINE} and {MIN_COSINE})")
        os.replace(made, out)
    logger.info("int8 image path at %s (cosine to float: median %.4f, worst %.4f)", out, median, worst)
    return out
