"""The lite text path (token ids -> embedding and token states) exported to ONNX, for searches without torch.

Exported once per checkpoint (and torch / onnxruntime version) into the cache folder, like the image path
(onnx_image.py); `lite_query.py` runs it. Outputs equal the torch path's to ~1e-6 (tests/test_query_path.py).
"""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import torch

from xmodal.indexer.models.onnx_runtime import cache_dir, save_optimized
from xmodal.indexer.models.text_tower import mean_pool

logger = logging.getLogger(__name__)


class _TextPath(torch.nn.Module):
    """(B, T) int64 ids and 0/1 mask -> ((B, D) unit embedding, (B, T, C) final token states)."""

    def __init__(self, lite):
        super().__init__()
        self.lite = lite

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.lite.text_tower(ids, mask)  # (B, T, C)
        return self.lite.embed_pooled_text(mean_pool(states, mask)), states


def export_raw(lite, dst: Path) -> Path:
    """The text path as torch exports it (weights inside, not yet optimised by ONNX Runtime) -> `dst`."""
    ids = torch.tensor([[101, 1037, 3899, 102], [101, 1037, 102, 0]])  # two texts, the second padded
    mask = (ids != 0).long()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic
        torch.onnx.export(_TextPath(lite).eval(), (ids, mask), str(dst), input_names=["ids", "mask"],
                          output_names=["embedding", "states"], opset_version=17, dynamo=False,
                          dynamic_axes={"ids": {0: "batch", 1: "tokens"}, "mask": {0: "batch", 1: "tokens"},
                                        "embedding": {0: "batch"}, "states": {0: "batch", 1: "tokens"}})
    return dst


def export(lite, fingerprint: str) -> Path:
    """The float32 graph of the lite text path in the cache (exported on first use), saved as ONNX Runtime
    optimises it, its weights in a file beside it (onnx_runtime.save_optimized): sessions load it with
    optimize=False."""
    import onnxruntime as ort

    key = hashlib.sha256(f"{fingerprint}|{torch.__version__}|{ort.__version__}|text|3".encode()).hexdigest()[:16]
    path = cache_dir() / f"lite-text-{key}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = export_raw(lite, path.with_suffix(f".{os.getpid()}.tmp"))
        try:
            save_optimized(tmp, path)  # fused once here; weights beside the graph, memory-mapped by ONNX Runtime
        finally:
            tmp.unlink()
        logger.info("exported the lite text path to %s", path)
    return path
