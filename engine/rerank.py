"""Reranking the dual encoder's top-k with the cross-attention fusion model (engine.fusion).

Pure functions (no models): `fuse` combines scores, `rerank_topk` reorders one top-k list and
`reranked_matrix` applies per-row reranks to a similarity matrix for Recall@K (ranks beyond K keep the
dual order). `Reranker` loads data/lite-rerank.pt (fusion weights, patch PCA, fusion weight alpha).

Fused score: (dual cosine similarity - hubness prior) + alpha * match score. The match score is the
cross-attention model's (engine.fusion); the hubness prior (`hub_prior`) is computed from the candidate's
dual vector and a bank of train embeddings stored with the checkpoint. alpha is chosen per direction on
Flickr8k dev (best R@1 at K = 16) and stored with the checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from indexer.patch_tokens import LITE_RERANK, PatchProjector

from .fusion import CrossAttentionMatcher, FusionReranker



def hub_prior(vectors, bank, tau: float, chunk: int = 1024) -> np.ndarray:
    """(N, D) unit vectors, (M, D) bank of unit vectors of the other modality -> (N,) float64
    tau * log sum_j exp(v . bank_j / tau).

    A candidate that is close to many of the bank's queries (a "hub") gets a large prior; subtracting it from
    the dual similarity turns the score into tau * log softmax over the bank and the query, the inverted
    softmax of Smith et al. (2017) / querybank normalisation of Bogolin et al. (2022), at the dual encoder's
    own temperature. Hubs otherwise win top ranks for queries they do not match."""
    v = torch.as_tensor(np.asarray(vectors, np.float32))
    b = torch.as_tensor(np.asarray(bank, np.float32))
    if v.ndim != 2 or b.ndim != 2 or v.shape[1] != b.shape[1]:
        raise ValueError(f"vectors {tuple(v.shape)} and bank {tuple(b.shape)} must be 2-D with equal widths")
    out = [torch.logsumexp(v[s:s + chunk] @ b.T / tau, dim=1).double() * tau for s in range(0, len(v), chunk)]
    return torch.cat(out).numpy() if out else np.zeros(0)


def fuse(dual_scores, itm_logits, alpha: float) -> np.ndarray:
    """dual + alpha * itm, elementwise (alpha = 0: the dual order)."""
    return np.asarray(dual_scores, np.float64) + float(alpha) * np.asarray(itm_logits, np.float64)


def rerank_topk(ids, dual_scores, itm_scores, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One top-k list -> (ids, fused scores), best first; ties keep the input (dual) order."""
    ids = np.asarray(ids)
    fused = fuse(dual_scores, itm_scores, alpha)
    if ids.shape != fused.shape:
        raise ValueError(f"ids {ids.shape} and scores {fused.shape} differ in shape")
    order = np.argsort(-fused, kind="stable")
    return ids[order], fused[order]


def reranked_matrix(sim: np.ndarray, top: np.ndarray, fused: np.ndarray) -> np.ndarray:
    """sim (R, C); top (R, K) column ids of each row's top K; fused (R, K) their new scores.
    -> float64 copy of sim where each row's top K rank above all other columns, ordered by fused."""
    out = np.array(sim, dtype=np.float64)
    if top.shape[1] == 0:
        return out
    rows = np.arange(len(out))[:, None]
    fused = np.asarray(fused, np.float64)
    # shift so the smallest fused score sits 1 above the row maximum: order within top K = fused order
    shifted = fused - fused.min(1, keepdims=True) + out.max(1, keepdims=True) + 1.0
    out[rows, top] = shifted
    return out


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

    def hub_prior(self, vectors: np.ndarray, direction: str) -> np.ndarray | None:
        """Hubness priors of candidates' dual vectors (K, D): images for "t2i" (against the bank's texts),
        texts for "i2t" (against its images); None when the checkpoint has no bank."""
        if self.hub is None:
            return None
        bank = self.hub["texts"] if direction == "t2i" else self.hub["images"]
        return hub_prior(vectors, bank, self.hub["tau"])

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
