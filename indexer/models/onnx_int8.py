"""An int8 copy of the lite image path (`XMODAL_IMAGE_RUNTIME=int8`): ONNX Runtime static quantisation,
weights per channel (int8), activations per tensor (uint8), ranges calibrated with MinMax.

Calibration needs photos but must not need a dataset, so it uses the sample photos shipped in data/samples
with seeded crops and mirror images (56 inputs): on Flickr8k dev this costs 0.22 (t2i) and 0.40 (i2t) points
of R@1 against the float graph, inside the 0.5-point budget, while calibrating on 256 Flickr8k train photos
cost 0.0 / 0.1 (benchmarks/runtimes.py, benchmarks/NOTES.md). Quantising only the convolutions was far
worse (-5 points): the graph is quantised whole.

int8 kernels differ between CPUs: without VNNI (AVX2 only), ONNX Runtime multiplies uint8 activations by
int8 weights with vpmaddubsw, whose 16-bit pair sums saturate, and the plain graph drifts there (cosine to
float: median 0.910, worst 0.627 on an AMD EPYC with AVX2 only). So the graph is made in `VARIANTS`, tried
in order, and the first whose embeddings of the calibration inputs stay close to the float graph's on this
CPU (`MIN_MEDIAN_COSINE`, `MIN_COSINE`) is kept: int8 weights (`S8`: the fastest where VNNI multiplies
bytes), then uint8 weights (`U8U8`: ONNX Runtime widens both sides to 16 bits before multiplying, on every
x86-64 kernel, so nothing saturates and the result is the same on any CPU). The choice is `choose`, a pure
function of the candidates and their measurements. A CPU where every variant drifts keeps float32. 7-bit
weights (`REDUCE_RANGE`, ONNX Runtime's advice for CPUs without VNNI: 255 x 64 x 2 fits in 16 bits) cannot
saturate either, but lose too much on this model: cosine to float median 0.963, worst 0.524 (crops of the horse
silhouette), on any CPU; it is not a candidate (benchmarks/runtimes.py measures it).

The kept graph is made once next to the float one in the cache, named by its variant
(`lite-image-<key>-int8-v<VERSION>-<variant>.onnx`); later runs take the first variant found there, in
order (only a graph that passed the check on this machine is ever written there).
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from xmodal.indexer.resources import samples_dir

logger = logging.getLogger(__name__)

SAMPLES = samples_dir()
#: int8 against float embeddings of the calibration inputs, median and worst. Measured on a CPU with VNNI:
#: 0.99+ and 0.92 (the worst is a crop of the Hubble deep field); saturating kernels give far less.
MIN_MEDIAN_COSINE, MIN_COSINE = 0.98, 0.85
VERSION = 1  # bump when the recipe changes: cached int8 graphs are then made again


class QuantizationError(Exception):
    pass


@dataclass(frozen=True)
class Variant:
    """One way to quantise: the weights' type (an onnxruntime.quantization.QuantType name) and whether
    they use 7 bits (`reduce_range`). Activations are uint8 in every variant."""
    name: str
    weight_type: str = "QInt8"
    reduce_range: bool = False


S8, U8U8 = Variant("s8"), Variant("u8u8", weight_type="QUInt8")
REDUCE_RANGE = Variant("s8-reduce-range", reduce_range=True)
VARIANTS = (S8, U8U8)  # the candidates, in order


@dataclass(frozen=True)
class Drift:
    """A variant's embeddings of the calibration inputs against the float graph's: cosine median, worst."""
    variant: Variant
    median: float
    worst: float

    def __str__(self) -> str:
        return f"{self.variant.name}: median {self.median:.3f}, worst {self.worst:.3f}"


def choose(candidates: Iterable[Variant], measure: Callable[[Variant], tuple[float, float]],
           min_median: float, min_worst: float) -> tuple[Variant | None, list[Drift]]:
    """The first of `candidates` that stays close to float, `measure(variant)` giving its (median, worst)
    cosine, and every measurement made, in order (none after the one kept). None when all drift."""
    tried = []
    for variant in candidates:
        median, worst = measure(variant)
        tried.append(Drift(variant, float(median), float(worst)))
        if median >= min_median and worst >= min_worst:
            return variant, tried
    return None, tried


def cached_path(float_path: Path, variant: Variant) -> Path:
    return float_path.with_name(f"{float_path.stem}-int8-v{VERSION}-{variant.name}.onnx")


def variant_of(path: Path) -> str | None:
    """The variant name of a quantised graph made here, from its file name (None for any other file)."""
    return next((v.name for v in (*VARIANTS, REDUCE_RANGE) if Path(path).name.endswith(f"-{v.name}.onnx")), None)


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


def embed(path: Path, pixels: np.ndarray) -> np.ndarray:
    """The embeddings the graph at `path` gives (N, 3, size, size) uint8 `pixels`, in one batch."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixels": pixels})[0]


class Quantiser:
    """Makes variants of one float graph in `workdir`: the graph is pre-processed and calibrated once (the
    ranges are cached as JSON and shared by every variant), and each variant is measured against float."""

    def __init__(self, float_path: Path, preprocess, workdir: Path, batch: int = 16):
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.workdir = Path(workdir)
        self.pixels = calibration_pixels(preprocess)
        self.batch = batch
        self.ref = embed(float_path, self.pixels)
        self.pre, self.ranges = self.workdir / "pre.onnx", self.workdir / "ranges.json"
        quant_pre_process(str(float_path), str(self.pre), skip_symbolic_shape=True)

    def path(self, variant: Variant) -> Path:
        return self.workdir / f"{variant.name}.onnx"

    def make(self, variant: Variant) -> Path:
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
            quantize_static

        pixels, batch = self.pixels, self.batch

        class Batches(CalibrationDataReader):
            def __init__(self):
                self.batches = iter([pixels[s:s + batch] for s in range(0, len(pixels), batch)])

            def get_next(self):
                b = next(self.batches, None)
                return None if b is None else {"pixels": b}

        logger.info("quantising the lite image path to int8, variant %s (calibration on %d sample inputs)",
                    variant.name, len(pixels))
        quantize_static(str(self.pre), str(self.path(variant)), None if self.ranges.exists() else Batches(),
                        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=variant.reduce_range,
                        weight_type=QuantType[variant.weight_type], activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(self.ranges))
        return self.path(variant)

    def measure(self, variant: Variant) -> tuple[float, float]:
        """Makes `variant` and gives the (median, worst) cosine of its embeddings to float's on this CPU."""
        cosine = (self.ref * embed(self.make(variant), self.pixels)).sum(1)
        return float(np.median(cosine)), float(cosine.min())


def quantized(float_path: Path, preprocess, batch: int = 16, candidates: Iterable[Variant] | None = None) -> Path:
    """The int8 graph made from `float_path` (cached beside it): the first of `candidates` (`VARIANTS`) that
    stays close to float on this CPU. Raises QuantizationError when every one drifts."""
    candidates = tuple(VARIANTS if candidates is None else candidates)
    for variant in candidates:
        out = cached_path(float_path, variant)
        if out.exists():
            logger.info("int8 image path: variant %s, at %s", variant.name, out)
            return out
    with tempfile.TemporaryDirectory(dir=float_path.parent) as tmp:
        q = Quantiser(float_path, preprocess, Path(tmp), batch)
        kept, tried = choose(candidates, q.measure, MIN_MEDIAN_COSINE, MIN_COSINE)
        if kept is None:
            raise QuantizationError(f"int8 embeddings drift on this CPU in every variant (cosine to float, "
                                    f"{'; '.join(map(str, tried))}; needed {MIN_MEDIAN_COSINE} and {MIN_COSINE})")
        out = cached_path(float_path, kept)
        os.replace(q.path(kept), out)
    for drift in tried[:-1]:
        logger.info("int8 variant %s drifts on this CPU (cosine to float: median %.4f, worst %.4f)",
                       drift.variant.name, drift.median, drift.worst)
    logger.info("int8 image path: variant %s kept, at %s (cosine to float: median %.4f, worst %.4f)",
                kept.name, out, tried[-1].median, tried[-1].worst)
    return out
