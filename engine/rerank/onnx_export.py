"""Writes the torch reranker (lite.Reranker) as the files session.RerankSession reads: the matcher as an ONNX
graph, the banks and projection as arrays, the rest as JSON. Each file is written to a temporary name and
renamed, so a reader never sees half a file."""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch



def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


class _Matcher(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        return self.model(text, text_mask, patches)  # (K, T, C), (K, T), (K, P, Cp) -> (K,)


def export_reranker(reranker, files) -> None:
    """reranker: a loaded lite.Reranker -> files (a session.CachedReranker: graph, arrays, meta) in the cache."""
    rr = reranker
    # the checkpoint's sizes: token state width (384 MiniLM, 768 MPNet) and patches per photo (49, 81)
    example = (torch.randn(2, 5, rr.text_dim), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
               torch.randn(2, rr.patches, rr.patch_dim))  # text states, mask, patch tokens

    def graph(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Matcher(rr.model).eval(), example, str(tmp),
                              input_names=["text", "text_mask", "patches"], output_names=["score"],
                              opset_version=17, dynamo=False,
                              dynamic_axes={"text": {0: "k", 1: "tokens"}, "text_mask": {0: "k", 1: "tokens"},
                                            "patches": {0: "k"}, "score": {0: "k"}})

    arrays, meta = {}, {"config": rr.config, "dev": rr.dev, "alpha": rr.alpha, "beta": rr.beta}
    if rr.projector is not None:
        arrays.update(pca_mean=rr.projector.mean, pca_proj=rr.projector.proj)
    if rr.hub is not None:
        # float32 on disk: memory-mapped and multiplied as they are (numpy converts float16 slowly)
        arrays.update(hub_texts=rr.hub["texts"].astype(np.float32), hub_images=rr.hub["images"].astype(np.float32))
        meta["hub_tau"] = rr.hub["tau"]
    if rr.exemplars is not None:
        ex = rr.exemplars
        arrays.update(ex_keys=ex["keys"], ex_scale=ex["scale"], ex_norms=ex["norms"], ex_images=ex["images"])
        meta.update(ex_m=ex["m"], ex_tau=ex["tau"])

    meta["arrays"] = sorted(arrays)

    def save_arrays(tmp: Path) -> None:
        tmp.mkdir()
        for name, value in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(value))

    if files.arrays.exists():  # from an export that died before its meta file: redo
        shutil.rmtree(files.arrays)
    _atomic(files.graph, graph)
    _atomic(files.arrays, save_arrays)
    _atomic(files.meta, lambda tmp: tmp.write_text(json.dumps(meta, default=_plain), encoding="utf-8"))


def _plain(x):
    """JSON for the tensors and numpy scalars a checkpoint's dev figures may hold."""
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"cannot write {type(x).__name__} as JSON")
