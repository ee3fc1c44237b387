"""The encoder registry (as simonw/llm registers models): a name -> a factory, built once per process.

    enc = get_encoder("lite")
    enc.encode_images([PIL.Image, ...]) -> np.ndarray (n, dim) float32
    enc.encode_texts(["a dog", ...])     -> np.ndarray (n, dim) float32

The interface is `base.Encoder`. Tests and plugins add their own with `register_encoder(name, factory)`;
a name with a "/" or a local folder loads a CLIP-family checkpoint (`clip.HFClipEncoder`). Importing this
module loads no model and no torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from xmodal.indexer.models.base import Encoder, ModelUnavailable

_REGISTRY: dict[str, Callable[[], Encoder]] = {}
_CACHE: dict[str, Encoder] = {}


def register_encoder(name: str, factory: Callable[[], Encoder]) -> None:
    """Make `name` available to `get_encoder`; replaces an earlier registration of the same name."""
    _REGISTRY[name] = factory
    _CACHE.pop(name, None)


def available_encoders() -> list[str]:
    return sorted(_REGISTRY)


def is_checkpoint_name(name: str) -> bool:
    """A Hugging Face name ("org/model") or a local folder: loaded as a CLIP-family checkpoint."""
    return "/" in name or Path(name).expanduser().is_dir()


def get_encoder(name: str = "lite") -> Encoder:
    """The encoder registered as `name`, or a CLIP-family checkpoint by name or folder; built once per process."""
    if name not in _REGISTRY and not is_checkpoint_name(name):
        raise ModelUnavailable(f"unknown model {name!r}; available: {', '.join(available_encoders())}, "
                               "or a CLIP / SigLIP / Chinese-CLIP checkpoint (Hugging Face name or local folder)")
    if name not in _CACHE:
        if name in _REGISTRY:
            _CACHE[name] = _REGISTRY[name]()
        else:
            from xmodal.indexer.models.clip import HFClipEncoder

            _CACHE[name] = HFClipEncoder(name)
    return _CACHE[name]


def _lite() -> Encoder:
    from xmodal.indexer.models.lite_encoder import LiteEncoder

    return LiteEncoder()


def _base() -> Encoder:
    from xmodal.indexer.models.lite_encoder import LiteEncoder
    from xmodal.indexer.models.towers import BUNDLED
    from xmodal.indexer.resources import data_file

    spec = BUNDLED["base"]
    return LiteEncoder(data_file(spec.heads), name="base", extra=spec.extra)


register_encoder("lite", _lite)
register_encoder("base", _base)
