"""The reranker's patch projection, applied at index time: raw image-tower tokens (n, P, 1280) -> the
compact tokens a library stores (n, P, Cp) float16 (Cp: 128 for lite, 96 for base), read from the model's
own reranker checkpoint (package data, `towers.bundled_reranker`: lite-rerank.pt for lite's 7 x 7 = 49
patches, base-rerank.pt for base's 9 x 9 = 81). Stored by `xmodal.indexer.storage.patch_tokens.PatchStore`."""
from __future__ import annotations

import hashlib
import os

import numpy as np

from xmodal.indexer.models.towers import BUNDLED, bundled_reranker
from xmodal.indexer.resources import data_file
from xmodal.indexer.storage.patch_tokens import MAX_SLOT_BYTES, PatchSpec, PatchTokenError

LITE_RERANK = data_file(BUNDLED["lite"].rerank)  # the lite model's reranker (package data); see bundled_reranker


class PatchProjector:
    """Raw tower tokens (n, P, C) -> stored tokens (n, P, dim) float16: (x - mean) @ proj, a whitened PCA
    fitted when the reranker was trained, read from its checkpoint (key "pca": {"mean", "proj"})."""

    def __init__(self, mean, proj, tokens: int = 49):
        """mean (C,), proj (C, dim): numpy arrays or the tensors a checkpoint holds; tokens: patches per photo
        (the checkpoint's config "patches": 49 for a 7 x 7 map, 81 for 9 x 9)."""
        self.mean, self.proj = np.asarray(mean, np.float32), np.asarray(proj, np.float32)
        self._session = None  # ONNX Runtime, single-threaded, for numpy input (see _onnx_projection)
        digest = hashlib.sha256()
        for t in (self.mean, self.proj):
            digest.update(t.tobytes())
        self.spec = PatchSpec(tokens=tokens, dim=int(self.proj.shape[1]), source=digest.hexdigest()[:16])
        if self.spec.slot_bytes > MAX_SLOT_BYTES:
            raise PatchTokenError(f"patch tokens of {self.spec.slot_bytes} bytes per image exceed the "
                                  f"{MAX_SLOT_BYTES}-byte budget; project to fewer channels")

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> "PatchProjector":
        import torch

        ck = torch.load(path, map_location="cpu", weights_only=True)
        pca = ck.get("pca")
        if pca is None:
            raise PatchTokenError(f"{path}: the reranker checkpoint has no patch projection (pca)")
        return cls(pca["mean"], pca["proj"], tokens=int(ck.get("config", {}).get("patches", 49)))

    def __call__(self, raw) -> np.ndarray:
        """(n, P, C) raw tokens (a numpy array, or a torch tensor) -> (n, P, dim) float16."""
        is_array = isinstance(raw, np.ndarray)
        if tuple(raw.shape[1:]) != (self.spec.tokens, self.mean.shape[0]):
            raise PatchTokenError(f"raw patch tokens of shape {tuple(raw.shape)} do not fit the projection "
                                  f"({self.spec.tokens} x {self.mean.shape[0]})")
        if self._session is None and is_array:
            self._session = _onnx_projection(self.mean, self.proj)
        if self._session is not None and is_array:
            return self._session.run(None, {"x": np.ascontiguousarray(raw, np.float32)})[0]
        if is_array:  # no onnxruntime
            return ((raw.astype(np.float32) - self.mean) @ self.proj).astype(np.float16)
        import torch

        x = torch.as_tensor(raw).float()
        return ((x - torch.from_numpy(self.mean)) @ torch.from_numpy(self.proj)).half().numpy()


def _onnx_projection(mean: np.ndarray, proj: np.ndarray):
    """A single-threaded ONNX Runtime session computing ((x - mean) @ proj) as float16, or False without
    onnxruntime. Indexing projects every batch beside the ONNX Runtime lanes and the decoders: a torch op
    there wakes torch's OpenMP pool, whose threads then spin on the busy cores (measured: 7% fewer images/s
    end to end), and numpy's BLAS threads spin likewise; this session runs on the calling thread only."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return False
    graph = helper.make_graph(
        [helper.make_node("Sub", ["x", "mean"], ["centred"]), helper.make_node("MatMul", ["centred", "proj"], ["y32"]),
         helper.make_node("Cast", ["y32"], ["y"], to=TensorProto.FLOAT16)],
        "patch_projection",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "p", mean.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["n", "p", proj.shape[1]])],
        [numpy_helper.from_array(np.ascontiguousarray(mean, np.float32), "mean"),
         numpy_helper.from_array(np.ascontiguousarray(proj, np.float32), "proj")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def default_projector(model: str) -> PatchProjector | None:
    """The projection `xmodal index` stores tokens with: that of the model's own bundled reranker
    (`bundled_reranker`), or None for a model without one (its library stores no patch tokens)."""
    path = bundled_reranker(model)
    return None if path is None else PatchProjector.from_checkpoint(path)
