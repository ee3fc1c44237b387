"""Reranking the dual encoder's top-k with the cross-attention fusion model (model.py).

`Reranker` loads lite-rerank.pt (package data: fusion weights, patch PCA, fusion weights alpha and beta,
hubness and exemplar banks). The scoring arithmetic is pure and lives in scoring.py.

Fused score: (dual cosine similarity - hubness prior) + beta * exemplar + alpha * match score. The match
score is the cross-attention model's (model.py); the hubness prior (`hub_prior`) is computed from the
candidate's dual vector and a bank of train embeddings stored with the checkpoint; the exemplar term
(`exemplar_expansion`, text -> image only) is the candidate's cosine with the photos of the train captions
nearest to the query. alpha and beta are chosen per direction on Flickr8k dev (best R@1 at K = 16) and
stored with the checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xmodal.indexer.models.text_tower import mean_pool
from xmodal.indexer.models.patch_projector import LITE_RERANK, PatchProjector

from xmodal.engine.rerank.model import CrossAttentionMatcher, FusionReranker
from xmodal.engine.rerank.scoring import exemplar_expansion, hub_prior, unpack_keys


def sentence_vectors(text: "TextTokens") -> np.ndarray:
    """MiniLM token states -> (B, 384) unit sentence vectors (mean over the real tokens, as
    sentence-transformers pools all-MiniLM-L6-v2)."""
    pooled = mean_pool(torch.as_tensor(text.states).float(), torch.as_tensor(text.mask))  # (B, 384)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


@dataclass
class TextTokens:
    """MiniLM token states of one or more texts: states (B, T, 384), mask (B, T), ids (B, T)."""

    states: torch.Tensor
    mask: torch.Tensor
    ids: torch.Tensor | None = None


class Reranker:
    """The bundled cross-attention reranker: fusion weights, the patch projection and the fusion weight alpha
    from one checkpoint. score(query, candidates) -> ITM logits, one per candidate:

    * a text query (TextTokens of one text) against candidate images' patch tokens (K, 49, Cp);
    * an image query's patch tokens (49, Cp) against candidate texts (TextTokens of K texts).
    """

    name = "lite"

    def __init__(self, checkpoint: Path = LITE_RERANK):
        if not Path(checkpoint).exists():
            raise FileNotFoundError(f"reranker not found at {checkpoint}; train it with `xmodal train rerank --data DIR`")
        ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
        cfg = ck["config"]
        a = ck["alpha"]  # one fusion weight per direction (older checkpoints: one for both)
        self.alpha = {"t2i": float(a["t2i"]), "i2t": float(a["i2t"])} if isinstance(a, dict) else \
            {"t2i": float(a), "i2t": float(a)}
        self.config, self.dev = cfg, ck.get("dev")
        self.checkpoint = Path(checkpoint)
        self.projector = PatchProjector(ck["pca"]["mean"], ck["pca"]["proj"]) if ck.get("pca") is not None else None
        patch_dim = self.projector.spec.dim if self.projector else 1280
        self.arch = cfg.get("arch", "itm")  # format 1 checkpoints: the ITM transformer
        if self.arch == "match":
            self.model = CrossAttentionMatcher(patch_dim=patch_dim, dim=cfg["dim"], both=cfg.get("both", False))
        else:
            self.model = FusionReranker(patch_dim=patch_dim, dim=cfg["dim"], layers=cfg["layers"],
                                        heads=cfg["heads"], ffn=cfg["ffn"], dropout=0.0)
        self.model.load_state_dict({k: v.float() for k, v in ck["state"].items()})
        self.model.eval()
        hub = ck.get("hub")  # {"texts": (M, D), "images": (N, D), "tau"} or None
        self.hub = None if hub is None else {"texts": hub["texts"].float().numpy(),
                                             "images": hub["images"].float().numpy(), "tau": float(hub["tau"])}
        ex = None if hub is None else hub.get("exemplars")  # format 2 checkpoints from before: none
        self.exemplars = None if ex is None else {
            "keys": unpack_keys(ex["keys"], ex["scale"]), "images": ex["images"].long().numpy(),
            "m": int(ex["m"]), "tau": float(ex["tau"])}
        b = ck.get("beta") or {}  # weight of the exemplar term per direction (0: off)
        self.beta = {"t2i": float(b.get("t2i", 0.0)), "i2t": float(b.get("i2t", 0.0))}

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
                               m=ex["m"], tau=ex["tau"])  # (1, D)
        return np.asarray(vectors, np.float32) @ e[0]

    def exemplar_matrix(self, sentences: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """(Q, 384) MiniLM sentence vectors of text queries, (N, D) photos' dual vectors -> (Q, N) cosines of each
        query's exemplar expansion with each photo (the benchmark's form of exemplar_scores)."""
        ex = self.exemplars
        q = torch.nn.functional.normalize(torch.as_tensor(np.asarray(sentences, np.float32)), dim=1).numpy()
        e = exemplar_expansion(q, ex["keys"], self.hub["images"], ex["images"], m=ex["m"], tau=ex["tau"])
        return e @ np.asarray(vectors, np.float32).T

    def patch_tokens(self, raw: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, 49, 1280) raw tower tokens, or (B, 1280, 7, 7) patch maps -> (B, 49, Cp) the tokens the model
        reads (as stored)."""
        raw = torch.as_tensor(raw)
        if raw.dim() == 4:
            raw = raw.float().flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C), row-major patches
        if self.projector is None:
            return torch.as_tensor(raw).float()
        return torch.from_numpy(self.projector(raw)).float()

    @torch.inference_mode()
    def score_text_to_images(self, text_states: torch.Tensor, text_mask: torch.Tensor,
                             patch_tokens: torch.Tensor) -> np.ndarray:
        """One text (T, 384) / (T,) mask against K images' (K, 49, Cp) tokens -> (K,) ITM logits."""
        k = len(patch_tokens)
        return self.model(text_states.float().expand(k, -1, -1), text_mask.expand(k, -1),
                          torch.as_tensor(patch_tokens).float()).numpy()

    @torch.inference_mode()
    def score_image_to_texts(self, patch_tokens: torch.Tensor, text_states: torch.Tensor,
                             text_mask: torch.Tensor) -> np.ndarray:
        """One image's (49, Cp) tokens against K texts (K, T, 384) / (K, T) -> (K,) ITM logits."""
        k = len(text_states)
        return self.model(text_states.float(), text_mask,
                          torch.as_tensor(patch_tokens).float().expand(k, -1, -1)).numpy()

    def score(self, query: TextTokens | np.ndarray | torch.Tensor,
              candidates: np.ndarray | torch.Tensor | TextTokens) -> np.ndarray:
        """ITM logits of a text query against images, or of an image query against texts (see the class)."""
        if isinstance(query, TextTokens):
            return self.score_text_to_images(query.states[0], query.mask[0], candidates)
        if not isinstance(candidates, TextTokens):
            raise TypeError("an image query is scored against texts: pass their TextTokens")
        return self.score_image_to_texts(query, candidates.states, candidates.mask)

    @torch.inference_mode()
    def attention(self, text: TextTokens, patch_tokens: torch.Tensor | np.ndarray) -> tuple[float, np.ndarray]:
        """One text against one image -> (ITM logit, (T, P) cross-attention of each token over the patches,
        averaged over layers and heads; rows sum to 1)."""
        logit, attn = self.model(text.states[:1].float(), text.mask[:1],
                                 torch.as_tensor(patch_tokens).float()[None], return_attention=True)
        weights = torch.stack(attn).mean(dim=(0, 2))[0]  # (layers, 1, h, T, P) -> (T, P)
        return float(logit[0]), weights.numpy()
