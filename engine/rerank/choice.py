"""Which reranker a search uses when asked for "the bundled one": each bundled model carries its own
(`towers.BundledModel.rerank`, found by `towers.bundled_reranker`), read by the library's own model only.

Names (the `--reranker` option of `xmodal search`, `SearchEngine(reranker=...)`): "auto" (default: the
model's own reranker when installed, else none, silently), "bundled" (the model's own, an error when it has
none), or a bundled model's name ("lite": kept for lite libraries; another model's library refuses it).
"""
from __future__ import annotations

from xmodal.indexer.models.towers import BUNDLED, bundled_reranker
from xmodal.indexer.resources import COMPANION_HINT

from xmodal.engine.search.errors import SearchError

BUNDLED_CHOICES = ("auto", "bundled")  # reranker names meaning the library's model's own bundled reranker


def is_bundled_choice(reranker: str | None) -> bool:
    """Whether a `reranker` choice means the library's model's own bundled reranker ("auto", "bundled", or a
    bundled model's name such as "lite"), as opposed to a BLIP checkpoint or None."""
    return reranker in BUNDLED_CHOICES or reranker in BUNDLED


def no_reranker_reason(model: str) -> str:
    """Why model `model` has no bundled reranker, in words."""
    spec = BUNDLED.get(model)
    if spec is None:
        return f"only the bundled models ({', '.join(BUNDLED)}) carry one"
    if not spec.rerank:
        return "none has been trained for it"
    if spec.name == "lite":
        return f"{spec.rerank} is missing: reinstall xmodal"
    return f"{spec.rerank} is not installed: {COMPANION_HINT}"


def check_bundled_reranker(reranker: str | None, model: str, root) -> None:
    """Refuse, with what to do instead, an explicit request for a bundled reranker the library's model `model`
    cannot use: another model's ("lite" for a base library), or its own where it has none. "auto" is never
    refused (no reranker then)."""
    if not is_bundled_choice(reranker) or reranker == "auto":
        return
    if reranker in BUNDLED and reranker != model:
        raise SearchError(f"the {reranker} reranker reads the {reranker} model's features, but library {root} was "
                          f"built with {model!r}; use --reranker bundled (the model's own reranker, where it has "
                          "one), a BLIP checkpoint as --reranker, or --no-rerank")
    if bundled_reranker(model) is None:
        raise SearchError(f"model {model!r} has no bundled reranker ({no_reranker_reason(model)}); search without "
                          "one (--reranker auto or --no-rerank) or give a BLIP checkpoint as --reranker")
