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
_QUERY: dict[str, Callable[[], Encoder]] = {}  # lighter query-time forms (same vectors), by name
_QUERY_CACHE: dict[str, Encoder] = {}


def register_encoder(name: str, factory: Callable[[], Encoder]) -> None:
    """Make `name` available to `get_encoder`; replaces an earlier registration of the same name (and its
    query-time form, so that `get_query_encoder` returns the new one too)."""
    _REGISTRY[name] = factory
    _CACHE.pop(name, None)
    _QUERY.pop(name, None)
    _QUERY_CACHE.pop(name, None)


def register_query_encoder(name: str, factory: Callable[[], Encoder]) -> None:
    """A query-time form of the registered encoder `name`: the same vectors from a lighter runtime (the lite
    model on ONNX Runtime, without torch)."""
    _QUERY[name] = factory
    _QUERY_CACHE.pop(name, None)


def get_query_encoder(name: str = "lite") -> Encoder:
    """The encoder a search uses for `name`: its query-time form where one is registered, else `get_encoder`."""
    if name not in _QUERY:
        return get_encoder(name)
    if name not in _QUERY_CACHE:
        _QUERY_CACHE[name] = _QUERY[name]()
    return _QUERY_CACHE[name]


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


def _lite_query() -> Encoder:
    return _bundled_query("lite")


def _bundled_query(name: str) -> Encoder:
    """A bundled model's encoder for a search: `lite_query.LiteQueryEncoder` from the cached ONNX graphs,
    exported first (with torch, once per checkpoint and machine) when they are missing; the torch encoder
    itself where ONNX Runtime is unavailable, XMODAL_QUERY_RUNTIME=torch, or the export fails."""
    import logging

    from xmodal.indexer.models.lite_query import LiteQueryEncoder, read_manifest
    from xmodal.indexer.models.onnx_runtime import cache_dir, query_runtime
    from xmodal.indexer.models.towers import BUNDLED
    from xmodal.indexer.resources import data_file

    heads = data_file(BUNDLED[name].heads)
    if query_runtime() == "torch" or not heads.exists():  # no heads: get_encoder says what is missing
        return get_encoder(name)
    manifest = read_manifest(heads)
    if manifest is None:
        log = logging.getLogger(__name__)
        log.warning("first search with the %s model on this machine: preparing its ONNX query graphs in %s "
                    "(once; `xmodal index` does it too)", name, cache_dir())
        encoder = get_encoder(name)
        try:
            encoder.export_query_graphs()
        except Exception as e:  # noqa: BLE001 - an export failure must not stop a search: torch still works
            log.warning("ONNX query graphs unavailable (%s); searching with torch", str(e).splitlines()[0])
            return encoder
        manifest = read_manifest(heads)
        if manifest is None:
            return encoder
    return LiteQueryEncoder(manifest)


def _base() -> Encoder:
    from xmodal.indexer.models.lite_encoder import LiteEncoder
    from xmodal.indexer.models.towers import BUNDLED
    from xmodal.indexer.resources import data_file

    spec = BUNDLED["base"]
    return LiteEncoder(data_file(spec.heads), name="base", extra=spec.extra)


register_encoder("lite", _lite)
register_encoder("base", _base)
register_query_encoder("lite", _lite_query)
register_query_encoder("base", lambda: _bundled_query("base"))
