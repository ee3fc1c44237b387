"""Reranking the dual encoder's top-k with the cross-attention fusion model (engine.fusion).

Pure functions (no models): `fuse` combines scores, `rerank_topk` reorders one top-k list and
`reranked_matrix` applies per-row reranks to a similarity matrix for Recall@K (ranks beyond K keep the
dual order). `Reranker` loads data/lite-rerank.pt (fusion weights, patch PCA, fusion weight alpha).

Fused score: (dual cosine similarity - hubness prior) + beta * exemplar + alpha * match score. The match
score is the cross-attention model's (engine.fusion); the hubness prior (`hub_prior`) is computed from the
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


def exemplar_expansion(queries, keys, values, value_of=None, m: int = 5, tau: float = 0.01,
                       chunk: int = 1024) -> np.ndarray:
    """(Q, E) unit query sentence vectors, a bank of (M, E) unit keys, (N, D) values and value_of (M,): the
    value row of each key (None: row j for key j) -> (Q, D) unit vectors, the softmax(key similarity / tau)-
    weighted mean of the values of each query's m nearest keys.

    With train captions as keys and their photos' dual vectors as values, this turns a text query into the
    photos of the captions most like it (exemplar query expansion); a candidate photo close to those gains
    in the fused score (engine.reranking). A small tau makes it nearly the nearest caption's photo."""
    q = torch.as_tensor(np.asarray(queries, np.float32))
    k = torch.as_tensor(np.asarray(keys, np.float32))
    val = torch.as_tensor(np.asarray(values, np.float32))
    of = torch.arange(len(k)) if value_of is None else torch.as_tensor(np.asarray(value_of, np.int64))
    if q.ndim != 2 or k.ndim != 2 or q.shape[1] != k.shape[1] or val.ndim != 2 or of.shape != (len(k),):
        raise ValueError(f"queries {tuple(q.shape)}, keys {tuple(k.shape)}, values {tuple(val.shape)} and "
                         f"value_of {tuple(of.shape)}: need (Q, E), (M, E), (N, D) and (M,)")
    if len(k) and (int(of.min()) < 0 or int(of.max()) >= len(val)):
        raise ValueError(f"value_of points outside the {len(val)} values")
    m = max(1, min(int(m), len(k)))
    out = []
    for s in range(0, len(q), chunk):
        top, idx = (q[s:s + chunk] @ k.T).topk(m, dim=1)  # (q, m) similarities and key ids
        w = torch.softmax(top / tau, dim=1)  # (q, m)
        out.append(torch.nn.functional.normalize(torch.einsum("qm,qmd->qd", w, val[of[idx]]), dim=1))
    return torch.cat(out).numpy() if out else np.zeros((0, val.shape[1]), np.float32)


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


def pack_keys(keys) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, E) float unit vectors -> int8 (M, E) and float32 (M,) per-row scales (a quarter of float32; the
    cosines move by about 1e-3)."""
    k = torch.as_tensor(np.asarray(keys, np.float32))
    scale = k.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    return torch.round(k / scale[:, None]).to(torch.int8), scale


def unpack_keys(q: torch.Tensor, scale: torch.Tensor) -> np.ndarray:
    """pack_keys' output -> (M, E) float32 unit vectors."""
    k = q.float() * scale.float()[:, None]
    return torch.nn.functional.normalize(k, dim=1).numpy()


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
