"""The lite image path (pixels -> embedding and 7x7 patch map) on ONNX Runtime: on this project's 2-core CPU
about 1.6x faster than channels-last PyTorch and 2.5x faster than eager, with the same outputs (to ~1e-6;
benchmarks/runtimes.py, tests/test_lite_model.py).

The torch modules are exported once per checkpoint (and torch / onnxruntime version) into the cache folder
($XDG_CACHE_HOME/xmodal/onnx) and loaded from there afterwards. `XMODAL_IMAGE_RUNTIME=torch` turns it off;
without onnxruntime installed the encoder stays on torch. `XMODAL_IMAGE_RUNTIME=int8` runs a statically
quantised copy instead (indexer.onnx_int8: the first variant, int8 or uint8 weights, that stays close to
float on this CPU): 1.4x the images/s, embeddings within cosine ~0.99.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


class _ImagePath(torch.nn.Module):
    """(B, 3, H, W) uint8 pixels -> ((B, D) unit embedding, (B, 1280, H/32, W/32) patch map).

    Normalisation (the checkpoint's mean and std) is part of the graph, so the caller only stacks the
    decoded photos: no float copy of the batch on the Python side. (uint8 NCHW measured 7% faster than
    float32 NCHW input, and NHWC input with the transpose in the graph 20% slower.)"""

    def __init__(self, lite, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.lite = lite
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))  # 0..255 units
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (pixels.float() - self.mean) / self.std  # (B, 3, H, W)
        maps = self.lite.image_patches(x)  # (B, 1280, H/32, W/32)
        return self.lite.embed_pooled_image(maps.mean(dim=(2, 3))), maps


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xmodal" / "onnx"


RUNTIMES = ("onnx", "int8", "torch")


def onnx_image_path(lite, fingerprint: str, preprocess):
    """An `OnnxImagePath` for the lite model (float32, or int8 with XMODAL_IMAGE_RUNTIME=int8), or None when
    onnxruntime is missing or XMODAL_IMAGE_RUNTIME=torch."""
    runtime = os.environ.get("XMODAL_IMAGE_RUNTIME", "onnx").strip().lower() or "onnx"
    if runtime not in RUNTIMES:
        logger.warning("XMODAL_IMAGE_RUNTIME=%r is not one of %s; using onnx", runtime, ", ".join(RUNTIMES))
        runtime = "onnx"
    if runtime == "torch":
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    try:
        path = export(lite, fingerprint, preprocess)
    except Exception as e:  # an export failure must never stop indexing: torch still works
        logger.warning("ONNX Runtime image path unavailable (%s); using torch", str(e).splitlines()[0])
        return None
    if runtime == "int8":
        from xmodal.indexer.models.onnx_int8 import quantized

        try:
            return OnnxImagePath(quantized(path, preprocess), kind="int8")
        except Exception as e:  # e.g. a CPU where every int8 variant drifts: float still works
            logger.warning("int8 image path unavailable (%s); using float32 ONNX Runtime", str(e).splitlines()[0])
    try:
        return OnnxImagePath(path)
    except Exception as e:
        logger.warning("ONNX Runtime image path unavailable (%s); using torch", str(e).splitlines()[0])
        return None


def export(lite, fingerprint: str, preprocess) -> Path:
    """The float32 graph of the lite image path in the cache (exported on first use): uint8 pixels in,
    embedding and patch maps out. Keyed by checkpoint, torch and onnxruntime versions and preprocessing."""
    import onnxruntime as ort

    size, mean, std = preprocess.size, tuple(preprocess.mean), tuple(preprocess.std)
    key = hashlib.sha256(f"{fingerprint}|{torch.__version__}|{ort.__version__}|{size}|{mean}|{std}|3".encode()
                         ).hexdigest()[:16]
    path = cache_dir() / f"lite-image-{key}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        module = _ImagePath(lite, mean, std).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on TF-style SAME padding: shapes are fixed by size
            torch.onnx.export(module, (torch.zeros(1, 3, size, size, dtype=torch.uint8),), str(tmp),
                              input_names=["pixels"], output_names=["embedding", "maps"], opset_version=17,
                              dynamo=False,
                              dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}, "maps": {0: "batch"}})
        os.replace(tmp, path)
        logger.info("exported the lite image path to %s", path)
    return path


class OnnxImagePath:
    """Runs an exported image path: one session on every core for single batches (latency), and one
    single-threaded session per core ("lanes") for callers that run batches concurrently (throughput)."""

    def __init__(self, path: Path, kind: str = "float32"):
        self.path = Path(path)
        self.kind = kind
        self.threads = torch.get_num_threads()
        self.session = self._session(self.threads)  # one batch at a time on every core: the latency path
        self._lanes: list = []
        self._lock = threading.Lock()

    def _session(self, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])

    @property
    def lanes(self) -> int:
        """How many batches to run at once for throughput: one single-threaded session per core. On this
        project's 2-core CPU two such lanes measured 1.1x the images/s of one 2-thread session (no
        barrier after every operator), and they keep their pace when decoding threads share the cores."""
        return self.threads

    def lane(self, i: int):
        """The single-threaded session of lane `i` (made on first use)."""
        with self._lock:
            while len(self._lanes) <= i:
                self._lanes.append(self._session(1))
            return self._lanes[i]

    def __call__(self, pixels: np.ndarray, lane: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B, H, W, 3) uint8, as photos are decoded -> ((B, D) float32 embeddings, (B, 1280, 7, 7) float32 maps).
        With `lane`, on that lane's single-threaded session (callers run lanes concurrently)."""
        session = self.session if lane is None else self.lane(lane)
        emb, maps = session.run(None, {"pixels": np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), np.uint8)})
        return emb, maps
