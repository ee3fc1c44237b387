"""What a bundled reranker carries besides its matcher, without torch: the fusion weights alpha and beta,
the hubness bank, the exemplar bank and the patch projection (engine/rerank/lite.py reads them from the
checkpoint, lite-rerank.pt or base-rerank.pt; engine/rerank/session.py from the cached arrays a search
process loads instead). Sizes (token state width, patches per photo) are the checkpoint's, never assumed.

Fused score: (dual cosine - hubness prior) + beta * exemplar + alpha * match (scoring.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmodal.indexer.models.patch_projector import PatchProjector

from xmodal.engine.rerank.scoring import exemplar_expansion, hub_prior, key_norms


TEXT_DIM, PATCHES = 384, 49  # what a config without "text_dim" / "patches" means: the lite model's sizes


def checkpoint_sizes(config: dict) -> tuple[int, int]:
    """(text_dim, patches) of a reranker checkpoint's config: the token state width its matcher reads and the
    patch tokens per photo; lite's (384, 49) where it names none (checkpoints from before base)."""
    return int(config.get("text_dim", TEXT_DIM)), int(config.get("patches", PATCHES))


@dataclass
class TextTokens:
    """Text-tower token states of one or more texts: states (B, T, C) (C: 384 for MiniLM, 768 for MPNet),
    mask (B, T), ids (B, T); numpy arrays on the ONNX path, torch tensors where a torch model made them (both
    are read with np.asarray)."""

    states: object
    mask: object
    ids: object = None


def sentence_vectors(text: TextTokens) -> np.ndarray:
    """Token states (B, T, C) -> (B, C) unit sentence vectors (mean over the real tokens, as
    sentence-transformers pools all-MiniLM-L6-v2 and all-mpnet-base-v2)."""
    states = np.asarray(text.states, np.float32)  # (B, T, C)
    m = np.asarray(text.mask, np.float32)[..., None]  # (B, T, 1)
    pooled = (states * m).sum(1) / np.maximum(m.sum(1), 1e-9)  # (B, C)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


class RerankBanks:
    """alpha, beta, hubness and exemplar banks and the patch projection of one reranker checkpoint, and the
    arithmetic on them. Subclasses add the matcher (`score`)."""

    name = "lite"  # the bundled model whose features the checkpoint reads (its config's "model")

    def _set_banks(self, checkpoint: Path, config: dict, dev, alpha, beta, pca, hub) -> None:
        """alpha: {"t2i", "i2t"} or one float (older checkpoints); beta: {"t2i", "i2t"} or None; pca: {"mean",
        "proj"} or None; hub: {"texts", "images", "tau", "exemplars"?} or None. Arrays or tensors."""
        self.checkpoint, self.config, self.dev = Path(checkpoint), config, dev
        self.name = str(config.get("model", "lite"))
        self.text_dim, self.patches = checkpoint_sizes(config)  # token state width, patch tokens per photo
        self.alpha = {"t2i": float(alpha["t2i"]), "i2t": float(alpha["i2t"])} if isinstance(alpha, dict) else \
            {"t2i": float(alpha), "i2t": float(alpha)}
        b = beta or {}  # weight of the exemplar term per direction (0: off)
        self.beta = {"t2i": float(b.get("t2i", 0.0)), "i2t": float(b.get("i2t", 0.0))}
        self.projector = None if pca is None else PatchProjector(pca["mean"], pca["proj"],
                                                                 tokens=self.patches)
        self.patch_dim = self.projector.spec.dim if self.projector else 1280
        # banks stay as given: float16 and int8 from a checkpoint (28 MB instead of 80 in float32, converted a
        # slice at a time by scoring.py), float32 hubness banks memory-mapped from the query cache (session.py)
        self.hub = None if hub is None else {"texts": _array(hub["texts"]), "images": _array(hub["images"]),
                                             "tau": float(hub["tau"])}
        ex = None if hub is None else hub.get("exemplars")  # format 2 checkpoints from before: none
        self.exemplars = None if ex is None else {
            "keys": np.asarray(ex["keys"], np.int8), "scale": np.asarray(ex["scale"], np.float32),
            "norms": np.asarray(ex["norms"], np.float32) if "norms" in ex else key_norms(ex["keys"]),
            "images": np.asarray(ex["images"], np.int64),
            "m": int(ex["m"]), "tau": float(ex["tau"])}

    def hub_prior(self, vectors: np.ndarray, direction: str) -> np.ndarray | None:
        """Hubness priors of candidates' dual vectors (K, D): images for "t2i" (against the bank's texts),
        texts for "i2t" (against its images); None when the checkpoint has no bank."""
        if self.hub is None:
            return None
        bank = self.hub["texts"] if direction == "t2i" else self.hub["images"]
        return hub_prior(vectors, bank, self.hub["tau"])

    def exemplar_scores(self, text: TextTokens, vectors: np.ndarray) -> np.ndarray | None:
        """A text query against candidate photos' (K, D) dual vectors -> (K,) cosines with the query's exemplar
        expansion (the bank photos of the train captions nearest to it in MiniLM's sentence space); None when
        the checkpoint has no exemplar bank."""
        if self.exemplars is None or self.hub is None:
            return None
        ex = self.exemplars
        e = exemplar_expansion(sentence_vectors(text)[:1], ex["keys"], self.hub["images"], ex["images"],
                               m=ex["m"], tau=ex["tau"], key_scale=ex["norms"])  # (1, D)
        return np.asarray(vectors, np.float32) @ e[0]

    def exemplar_matrix(self, sentences: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """(Q, C) text-tower sentence vectors of text queries, (N, D) photos' dual vectors -> (Q, N) cosines of each
        query's exemplar expansion with each photo (the benchmark's form of exemplar_scores)."""
        ex = self.exemplars
        q = np.asarray(sentences, np.float32)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        e = exemplar_expansion(q, ex["keys"], self.hub["images"], ex["images"], m=ex["m"], tau=ex["tau"],
                               key_scale=ex["norms"])
        return e @ np.asarray(vectors, np.float32).T


def _array(x) -> np.ndarray:
    """A bank as numpy without copying: float16 tensors from a checkpoint, or (memory-mapped) arrays."""
    return x if isinstance(x, np.ndarray) else np.asarray(x)
