"""Which image regions matched which words: the reranker's cross-attention, as data and as a heatmap.

    exp = engine.explain("a dog jumping into a lake", image_id)      # engine.search.SearchEngine
    exp.words, exp.word_maps (W, 7, 7), exp.overall (7, 7), exp.match
    overlay(photo, exp.overall).save("heat.png")                     # the photo's own size

The attention of each text token over the patches (7x7 for lite, 9x9 for base) is averaged over the
reranker's layers and heads; WordPiece pieces of one word are averaged into the word; [CLS] / [SEP] are
left out; the query's map is the mean of its words' maps. The patch grid covers the whole photo (the model
sees it squashed to a square), so a map stretches back over the photo as it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

SPECIAL = {"[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<pad>"}

# a perceptually ordered blue -> cyan -> yellow -> red ramp (anchors of matplotlib's "turbo", abridged)
_RAMP = np.array([[48, 18, 59], [70, 107, 227], [40, 187, 236], [49, 242, 153], [162, 252, 60],
                  [237, 208, 58], [251, 128, 34], [208, 47, 5], [122, 4, 3]], np.float64)


@dataclass
class Explanation:
    query: str
    words: list[str]
    word_maps: np.ndarray  # (W, gh, gw), each sums to 1
    overall: np.ndarray  # (gh, gw), sums to 1
    match: float  # the reranker's matching score for this pair

    def to_json(self) -> dict:
        return {"query": self.query, "match": round(self.match, 4), "grid": list(self.overall.shape),
                "overall": np.round(self.overall, 5).tolist(),
                "words": [{"word": w, "map": np.round(m, 5).tolist()} for w, m in zip(self.words, self.word_maps)]}


def word_groups(tokens: Sequence[str]) -> list[tuple[str, list[int]]]:
    """WordPiece tokens -> [(word, token positions)]: "##" pieces join the word before; specials dropped."""
    groups: list[tuple[str, list[int]]] = []
    for i, tok in enumerate(tokens):
        if tok in SPECIAL:
            continue
        if tok.startswith("##") and groups:
            word, pos = groups[-1]
            groups[-1] = (word + tok[2:], pos + [i])
        else:
            groups.append((tok, [i]))
    return groups


def explanation(query: str, tokens: Sequence[str], attention: np.ndarray, match: float,
                grid: tuple[int, int] = (7, 7)) -> Explanation:
    """attention (T, P) over P = gh * gw patches, rows in token order -> per-word and overall maps."""
    groups = word_groups(tokens)
    if not groups:
        raise ValueError(f"query {query!r} has no words to explain")
    maps = np.stack([attention[pos].mean(0) for _, pos in groups]).reshape(len(groups), *grid)  # (W, gh, gw)
    maps = maps / maps.sum(axis=(1, 2), keepdims=True)
    return Explanation(query, [w for w, _ in groups], maps, maps.mean(0), float(match))


def colormap(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours on the ramp."""
    x = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_RAMP) - 2)
    t = (x - lo)[..., None]
    return np.round(_RAMP[lo] * (1 - t) + _RAMP[lo + 1] * t).astype(np.uint8)


def overlay(image: Image.Image, grid_map: np.ndarray, opacity: float = 0.55) -> Image.Image:
    """The photo (its own size) with the map, min-max scaled and smoothly upsampled, blended over it."""
    m = np.asarray(grid_map, np.float32)
    span = float(m.max() - m.min())
    m = (m - m.min()) / span if span > 0 else np.zeros_like(m)
    up = Image.fromarray(m, mode="F").resize(image.size, Image.BICUBIC)
    heat = Image.fromarray(colormap(np.asarray(up)), mode="RGB")
    return Image.blend(image.convert("RGB"), heat, opacity)
