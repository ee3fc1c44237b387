"""BLIP's image-text matching head (`BlipForImageTextRetrieval`, e.g. Salesforce/blip-itm-base-coco) as a
reranker backend: the probability that a text describes an image, from BLIP's own cross-attention ITM head.

Offline only, like every checkpoint in xmodal: a local folder or the local Hugging Face cache.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from xmodal.indexer.models.base import ModelUnavailable
from xmodal.indexer.models.clip import resolve_checkpoint


class BlipReranker:
    """score(query, candidates): P(match) for one text against images, or one image against texts."""

    def __init__(self, name: str, batch_size: int = 16):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, BlipForImageTextRetrieval
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar on the terminal of a search

        path = resolve_checkpoint(name)
        if AutoConfig.from_pretrained(path, local_files_only=True).model_type != "blip":
            raise ModelUnavailable(f"{name}: not a BLIP checkpoint (BlipForImageTextRetrieval)")
        self.model = BlipForImageTextRetrieval.from_pretrained(path, local_files_only=True).eval()
        self.image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.name, self.batch_size = name, batch_size

    @torch.inference_mode()
    def _match(self, texts: Sequence[str], images: Sequence[Image.Image]) -> np.ndarray:
        """Pairwise P(match) for texts[i] with images[i]."""
        out = []
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[s:s + self.batch_size]), padding=True, truncation=True, max_length=35,
                                 return_tensors="pt")
            pixels = self.image_processor(images=[im.convert("RGB") for im in images[s:s + self.batch_size]],
                                          return_tensors="pt")["pixel_values"]
            logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                pixel_values=pixels, use_itm_head=True).itm_score  # (B, 2)
            out.append(logits.softmax(-1)[:, 1])
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def score(self, query: str | Image.Image, candidates: Sequence[Image.Image] | Sequence[str]) -> np.ndarray:
        """A text query against candidate images, or an image query against candidate texts."""
        if isinstance(query, str):
            return self._match([query] * len(candidates), list(candidates))
        return self._match(list(candidates), [query] * len(candidates))
