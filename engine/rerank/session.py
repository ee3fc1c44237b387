"""A bundled reranker (lite-rerank.pt, base-rerank.pt: `towers.bundled_reranker`) without torch: its
matcher as an ONNX Runtime graph and its banks as arrays, both cached per checkpoint
(engine/rerank/onnx_export.py writes them from the torch `Reranker` the first time), so that a search
process loads neither torch nor the checkpoint (about 4 s of a cold `xmodal search`).

`load_scorer(checkpoint)` returns this `RerankSession` (or, without onnxruntime or with
XMODAL_QUERY_RUNTIME=torch, the torch `Reranker`): both have the same scoring surface (banks.RerankBanks
plus `score`), and their scores agree to ~1e-6 (tests/test_query_path.py).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmodal.indexer.models.onnx_runtime import cache_dir, file_stamp, query_runtime, query_threads, session
from xmodal.indexer.models.patch_projector import LITE_RERANK

from xmodal.engine.rerank.banks import RerankBanks, TextTokens

logger = logging.getLogger(__name__)
FORMAT = 3  # of the cached files; a change here makes every cache entry stale


@dataclass(frozen=True)
class CachedReranker:
    """The cached files of one reranker checkpoint: the matcher graph, the banks (a folder of .npy files,
    memory-mapped when read) and the rest (.json, written last: its presence means the others are whole)."""

    graph: Path
    arrays: Path
    meta: Path

    @classmethod
    def of(cls, checkpoint: str | os.PathLike) -> "CachedReranker":
        name = Path(checkpoint).stem  # lite-rerank, base-rerank: one cache entry per checkpoint file
        stem = cache_dir() / f"{name}-{file_stamp(checkpoint, 'rerank', FORMAT)}"
        return cls(stem.with_suffix(".onnx"), stem.with_suffix(".arrays"), stem.with_suffix(".json"))

    def complete(self) -> bool:
        return self.graph.exists() and self.arrays.exists() and self.meta.exists()


class RerankSession(RerankBanks):
    """The reranker on ONNX Runtime and numpy: score(query, candidates) as `lite.Reranker.score`."""

    def __init__(self, files: CachedReranker, checkpoint: str | os.PathLike = LITE_RERANK):
        meta = json.loads(files.meta.read_text(encoding="utf-8"))
        a = {name: np.load(files.arrays / f"{name}.npy", mmap_mode="r") for name in meta["arrays"]}
        pca = {"mean": a["pca_mean"], "proj": a["pca_proj"]} if "pca_mean" in a else None
        hub = None
        if "hub_texts" in a:
            hub = {"texts": a["hub_texts"], "images": a["hub_images"], "tau": meta["hub_tau"]}
            if "ex_keys" in a:
                hub["exemplars"] = {"keys": a["ex_keys"], "scale": a["ex_scale"], "norms": a["ex_norms"],
                                    "images": a["ex_images"], "m": meta["ex_m"], "tau": meta["ex_tau"]}
        self._set_banks(checkpoint, meta["config"], meta.get("dev"), meta["alpha"], meta.get("beta"), pca, hub)
        self.arch = meta["config"].get("arch", "itm")
        self.session = session(files.graph, query_threads(), spin=False)  # numpy's priors follow each run

    def _run(self, states, mask, patches) -> np.ndarray:
        out = self.session.run(None, {"text": np.ascontiguousarray(states, np.float32),
                                      "text_mask": np.ascontiguousarray(mask, np.int64),
                                      "patches": np.ascontiguousarray(patches, np.float32)})[0]
        return out.astype(np.float32)

    def score(self, query, candidates) -> np.ndarray:
        """A text query (TextTokens of one text, (1, T, C) states) against K images' (K, P, Cp) tokens, or an
        image query's (P, Cp) tokens against K texts (TextTokens) -> (K,) match scores; C and P as the
        checkpoint's config says (banks.checkpoint_sizes)."""
        if isinstance(query, TextTokens):
            patches = np.asarray(candidates, np.float32)  # (K, P, Cp)
            k = len(patches)
            if k == 0:
                return np.zeros(0, np.float32)
            states = np.asarray(query.states, np.float32)[:1]  # (1, T, C)
            mask = np.asarray(query.mask, np.int64)[:1]
            return self._run(np.repeat(states, k, 0), np.repeat(mask, k, 0), patches)
        if not isinstance(candidates, TextTokens):
            raise TypeError("an image query is scored against texts: pass their TextTokens")
        states = np.asarray(candidates.states, np.float32)  # (K, T, C)
        k = len(states)
        if k == 0:
            return np.zeros(0, np.float32)
        patches = np.asarray(query, np.float32)[None]  # (1, P, Cp)
        return self._run(states, np.asarray(candidates.mask, np.int64), np.repeat(patches, k, 0))


def load_scorer(checkpoint: str | os.PathLike = LITE_RERANK):
    """The reranker a search runs: a `RerankSession` from the cache (built from the torch checkpoint the first
    time, a few seconds, logged), or the torch `Reranker` where ONNX Runtime is unavailable or unwanted."""
    if not Path(checkpoint).exists():
        raise FileNotFoundError(f"reranker not found at {checkpoint}; train it with `xmodal train rerank --data DIR`")
    if query_runtime() == "torch":
        from xmodal.engine.rerank.lite import Reranker

        return Reranker(checkpoint)
    files = CachedReranker.of(checkpoint)
    if not files.complete():
        from xmodal.engine.rerank.lite import Reranker
        from xmodal.engine.rerank.onnx_export import export_reranker

        logger.warning("first search with this reranker on this machine: preparing its ONNX graph in %s (once)",
                       files.graph.parent)
        torch_reranker = Reranker(checkpoint)
        try:
            export_reranker(torch_reranker, files)
        except Exception as e:  # noqa: BLE001 - an export failure must not stop a search: torch still works
            logger.warning("reranker ONNX export failed (%s); reranking with torch", str(e).splitlines()[0])
            return torch_reranker
    return RerankSession(files, checkpoint)
