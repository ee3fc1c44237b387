"""CLIP-family dual encoders through `transformers`: CLIP (`CLIPModel`), SigLIP (`SiglipModel`) and
Chinese-CLIP (`ChineseCLIPModel`), from a local folder or the local Hugging Face cache -- never the network.

Preprocessing is the checkpoint's own: its image processor config (size, crop, mean, std) and tokenizer.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from xmodal.indexer.models.base import ModelUnavailable

logger = logging.getLogger(__name__)

FAMILIES = {"clip": "CLIPModel", "siglip": "SiglipModel", "chinese_clip": "ChineseCLIPModel"}

#: Well-known checkpoints, for `xmodal models`: (embedding size, licence note).
KNOWN = {
    "openai/clip-vit-base-patch32": (512, "MIT (OpenAI CLIP)"),
    "openai/clip-vit-base-patch16": (512, "MIT (OpenAI CLIP)"),
    "openai/clip-vit-large-patch14": (768, "MIT (OpenAI CLIP)"),
    "google/siglip-base-patch16-224": (768, "Apache-2.0"),
    "OFA-Sys/chinese-clip-vit-base-patch16": (512, "MIT (Chinese-CLIP)"),
}


def _features(out) -> torch.Tensor:
    """get_*_features return a tensor in transformers 4 and a ModelOutput (pooler_output) in 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def resolve_checkpoint(name: str) -> str:
    """A local folder as is; a hub name only if it is already in the local cache (no download)."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception as e:  # not cached, malformed name, no hub library
        raise ModelUnavailable(
            f"model {name!r} is not a local folder and not in the local Hugging Face cache, and xmodal never "
            "downloads; use --model lite, or a local folder holding the checkpoint") from e


class HFClipEncoder:
    """`encode_images` / `encode_texts` for a CLIP, SigLIP or Chinese-CLIP checkpoint (L2-normalised float32)."""

    def __init__(self, name: str, batch_size: int = 32):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import transformers
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of a command's output

        path = resolve_checkpoint(name)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if config.model_type not in FAMILIES:
            raise ModelUnavailable(f"{name}: model type {config.model_type!r} is not a supported dual encoder "
                                   f"({', '.join(FAMILIES)})")
        self.family = config.model_type
        self.model = getattr(transformers, FAMILIES[self.family]).from_pretrained(path, local_files_only=True).eval()
        self.image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.name = path if Path(name).expanduser().is_dir() else name  # folders by absolute path
        self.dim = int(config.projection_dim if hasattr(config, "projection_dim") else
                       config.text_config.hidden_size)
        self.batch_size = batch_size
        self.device = torch.device("cpu")

    def to_device(self, device: str) -> None:
        """Run on `device` ("cpu", "cuda", "cuda:N"; see indexer.models.device): inputs go there, outputs come
        back to the CPU as float32."""
        self.device = torch.device(device)
        self.model.to(self.device)

    @property
    def image_size(self) -> int:
        size = getattr(self.image_processor, "crop_size", None) or self.image_processor.size
        return int(size.get("height") or size.get("shortest_edge"))

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        return pixels.to(self.device)

    def tokens(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if self.family == "siglip":  # SigLIP was trained on max-length padding and pools the last token
            max_len = self.model.config.text_config.max_position_embeddings
            return self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_len,
                                  return_tensors="pt")
        max_len = self.model.config.text_config.max_position_embeddings
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = [_features(self.model.get_image_features(pixel_values=self.pixel_values(images[s:s + self.batch_size])))
               for s in range(0, len(images), self.batch_size)]
        return _unit(out, self.dim)

    @torch.inference_mode()
    def encode_patches(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, patches, width) float32: the vision transformer's last hidden states without the class token
        (SigLIP has none), the patch tokens a cross-attention reranker attends to."""
        out = []
        for s in range(0, len(images), self.batch_size):
            states = self.model.vision_model(pixel_values=self.pixel_values(images[s:s + self.batch_size])).last_hidden_state
            out.append(states if self.family == "siglip" else states[:, 1:])
        return torch.cat(out).cpu().numpy().astype(np.float32) if out else np.zeros((0, 0, 0), np.float32)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokens(texts[s:s + self.batch_size])
            kwargs = {k: v.to(self.device) for k, v in enc.items()
                      if k in ("input_ids", "attention_mask", "token_type_ids")}
            if self.family == "siglip":
                kwargs.pop("attention_mask", None)  # as SiglipModel is used upstream
            out.append(_features(self.model.get_text_features(**kwargs)))
        return _unit(out, self.dim)


def _unit(chunks: list[torch.Tensor], dim: int) -> np.ndarray:
    if not chunks:
        return np.zeros((0, dim), np.float32)
    v = torch.nn.functional.normalize(torch.cat(chunks).float(), dim=-1).cpu()
    return np.ascontiguousarray(v.numpy(), dtype=np.float32)


def local_status(name: str) -> bool:
    """Whether the checkpoint's weights are available offline."""
    try:
        resolve_checkpoint(name)
        return True
    except ModelUnavailable:
        return False
