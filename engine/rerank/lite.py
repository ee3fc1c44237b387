"""Reranking the dual encoder's top-k with the cross-attention fusion model (model.py), in torch.

`Reranker` loads a bundled model's reranker checkpoint (format "xmodal-lite-rerank/2": lite-rerank.pt or
base-rerank.pt, package data, found by `towers.bundled_reranker`: fusion weights, patch PCA, fusion weights
alpha and beta, hubness and exemplar banks). Its config gives the sizes the matcher reads: `text_dim` (token
state width: 384 for MiniLM, 768 for MPNet), `patches` (patch tokens per photo: 49 for Lite0's 7 x 7, 81 for
Lite2's 9 x 9 at 280 px) and `model` (the bundled model whose features it reads), defaulting to lite's. The scoring arithmetic is pure and lives in scoring.py; the banks and their
arithmetic in banks.py (shared with session.py, the torch-free form a search process runs).

Fused score: (dual cosine similarity - hubness prior) + beta * exemplar + alpha * match score. The match
score is the cross-attention model's (model.py); the hubness prior (`hub_prior`) is computed from the
candidate's dual vector and a bank of train embeddings stored with the checkpoint; the exemplar term
(`exemplar_expansion`, text -> image only) is the candidate's cosine with the photos of the train captions
nearest to the query. alpha and beta are chosen per direction on Flickr8k dev (best R@1 at the default K, 32) and
stored with the checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from xmodal.indexer.models.base import ModelUnavailable
from xmodal.indexer.models.patch_projector import LITE_RERANK

from xmodal.engine.rerank.banks import RerankBanks, TextTokens, checkpoint_sizes, sentence_vectors
from xmodal.engine.rerank.model import CrossAttentionMatcher, FusionReranker

__all__ = ["Reranker", "TextTokens", "sentence_vectors", "build_matcher"]


def build_matcher(config: dict, patch_dim: int, dropout: float = 0.0) -> torch.nn.Module:
    """The matcher module a reranker config describes ("match": word-to-region, "itm": the ITM transformer,
    the default of old checkpoints), sized by its `text_dim` and `patches`; `dropout` > 0 only to train it
    (engine.training.rerank builds its model here too)."""
    text_dim, patches = checkpoint_sizes(config)
    arch = config.get("arch", "itm")
    if arch == "match":
        return CrossAttentionMatcher(text_dim=text_dim, patch_dim=patch_dim, dim=config["dim"],
                                     both=config.get("both", False), patches=patches)
    if arch == "itm":
        return FusionReranker(text_dim=text_dim, patch_dim=patch_dim, dim=config["dim"], layers=config["layers"],
                              heads=config["heads"], ffn=config["ffn"], dropout=dropout, patches=patches)
    raise ValueError(f"unknown reranker arch {arch!r}; use 'match' or 'itm'")


class Reranker(RerankBanks):
    """A bundled cross-attention reranker: fusion weights, the patch projection and the fusion weight alpha
    from one checkpoint. score(query, candidates) -> ITM logits, one per candidate (P patches and C-wide
    token states as the checkpoint's config says, see `checkpoint_sizes`):

    * a text query (TextTokens of one text) against candidate images' patch tokens (K, P, Cp);
    * an image query's patch tokens (P, Cp) against candidate texts (TextTokens of K texts).
    """

    def __init__(self, checkpoint: Path = LITE_RERANK):
        if not Path(checkpoint).exists():
            raise FileNotFoundError(f"reranker not found at {checkpoint}; train it with `xmodal train rerank --data DIR`")
        ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
        cfg = ck["config"]
        self._set_banks(checkpoint, cfg, ck.get("dev"), ck["alpha"], ck.get("beta"), ck.get("pca"), ck.get("hub"))
        self.arch = cfg.get("arch", "itm")  # format 1 checkpoints: the ITM transformer
        self.model = build_matcher(cfg, self.patch_dim)
        try:
            self.model.load_state_dict({k: v.float() for k, v in ck["state"].items()})
        except RuntimeError as e:  # e.g. weights for 49 patches under a config that says 81
            raise ModelUnavailable(f"{checkpoint}: its weights do not fit its config (text_dim {self.text_dim}, "
                                   f"patches {self.patches}, patch_dim {self.patch_dim}): "
                                   f"{str(e).splitlines()[-1].strip()}") from None
        self.model.eval()

    def patch_tokens(self, raw: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, P, 1280) raw tower tokens, or (B, 1280, H, W) patch maps -> (B, P, Cp) the tokens the model
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
        """One text (T, C) / (T,) mask against K images' (K, P, Cp) tokens -> (K,) ITM logits."""
        text_states = torch.as_tensor(np.asarray(text_states, np.float32))
        text_mask = torch.as_tensor(np.asarray(text_mask))
        k = len(patch_tokens)
        return self.model(text_states.expand(k, -1, -1), text_mask.expand(k, -1),
                          torch.as_tensor(patch_tokens).float()).numpy()

    @torch.inference_mode()
    def score_image_to_texts(self, patch_tokens: torch.Tensor, text_states: torch.Tensor,
                             text_mask: torch.Tensor) -> np.ndarray:
        """One image's (P, Cp) tokens against K texts (K, T, C) / (K, T) -> (K,) ITM logits."""
        text_states = torch.as_tensor(np.asarray(text_states, np.float32))
        text_mask = torch.as_tensor(np.asarray(text_mask))
        k = len(text_states)
        return self.model(text_states, text_mask,
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
        states = torch.as_tensor(np.asarray(text.states[:1], np.float32))
        mask = torch.as_tensor(np.asarray(text.mask[:1]))
        logit, attn = self.model(states, mask,
                                 torch.as_tensor(patch_tokens).float()[None], return_attention=True)
        weights = torch.stack(attn).mean(dim=(0, 2))[0]  # (layers, 1, h, T, P) -> (T, P)
        return float(logit[0]), weights.numpy()
