"""Reranking at query time: the dual encoder's top-k hits in, reordered hits out.

Every backend implements one protocol, `RerankBackend`: `text_query` / `image_query` / `indexed_image_query`
turn a query into its embedding and a `RerankQuery` (in one forward pass where the backend can),
`score_images(query, hits)` and `score_texts(query, hits)` -> one match score per hit, and
`priors(query, hits, direction)` -> a hubness prior and an exemplar cosine per hit (or None for either), fused with the dual-encoder similarity as `similarity - prior + beta * exemplar +
alpha * match` (engine.rerank), with `alpha[direction]` and `beta[direction]` for "t2i" (text -> images)
and "i2t" (image -> texts):

* `LiteBackend`: a bundled model's own cross-attention reranker (engine.rerank.Reranker: lite-rerank.pt,
  base-rerank.pt). Candidate photos' patch
  tokens come from the library's token store (written at index time), so no image file is opened; a photo
  indexed without them (before the first `xmodal index` with this version) is read from disk once per query.
  Candidate texts' token states are stored when a corpus is indexed (indexer.text_tokens); texts indexed
  without them get one text-tower pass at query time.
* `BlipBackend`: BLIP's image-text matching head (engine.blip_rerank), which reads the candidate photos.

A `RerankQuery` carries the query in every form a backend may need, computed once by the search engine.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

from xmodal.indexer.ingest.decode import DecodeError, read_image
from xmodal.indexer.storage.library import Library
from xmodal.indexer.records import ImageRecord, SearchHit
from xmodal.indexer.storage.text_tokens import TextTokenStore

from xmodal.engine.rerank.banks import TextTokens
from xmodal.engine.rerank.scoring import fuse

logger = logging.getLogger(__name__)


@dataclass
class RerankQuery:
    """text: the query text (t2i) with its token states; image: the query photo (i2t) with its patch tokens."""

    text: str | None = None
    tokens: TextTokens | None = None
    image: Image.Image | None = None
    patches: np.ndarray | None = None  # (P, Cp) float16, as stored
    exemplar: bool = True  # text -> image: add the exemplar term when the reranker has one


class RerankBackend(Protocol):
    """What the search engine needs of a reranker; it never asks which one it has."""

    name: str
    alpha: dict[str, float]  # match weight per direction, "t2i" and "i2t"
    beta: dict[str, float]  # exemplar weight per direction
    explains: bool  # can show which photo regions matched which words (xmodal explain)

    def text_query(self, text: str, exemplar: bool = True) -> tuple[np.ndarray, RerankQuery]:
        """A text query -> its (dim,) embedding and its rerank query."""

    def image_query(self, image: Image.Image) -> tuple[np.ndarray, RerankQuery]:
        """A query photo -> its (dim,) embedding and its rerank query."""

    def indexed_image_query(self, record: ImageRecord) -> RerankQuery:
        """The rerank query of a photo already in the library ('more like this')."""

    def score_images(self, query: RerankQuery, hits: Sequence[SearchHit]) -> np.ndarray:
        """(len(hits),) match scores of candidate photos."""

    def score_texts(self, query: RerankQuery, hits: Sequence[SearchHit]) -> np.ndarray:
        """(len(hits),) match scores of candidate texts."""

    def priors(self, query: RerankQuery | None, hits: Sequence[SearchHit], direction: str
               ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(hubness priors, exemplar cosines) per hit, None for either where the backend has none."""


def rerank_hits(hits: Sequence[SearchHit], match: np.ndarray, alpha: float,
                prior: np.ndarray | None = None, exemplar: np.ndarray | None = None,
                beta: float = 0.0) -> list[SearchHit]:
    """Reorder hits by (similarity - prior + beta * exemplar) + alpha * match (stable: ties keep the dual
    order); ranks renumbered. prior: per-hit hubness priors; exemplar: per-hit cosines with the query's
    exemplar expansion; None for none."""
    if not hits:
        return []
    sims = np.array([h.score for h in hits], np.float64)
    match = _neutral_where_missing(match, np.isfinite(match))  # damaged tokens give NaN: rank by similarity
    prior = np.zeros(len(hits)) if prior is None else np.asarray(prior, np.float64)
    ex = None if exemplar is None else np.asarray(exemplar, np.float64)
    fused = fuse(sims - prior + (float(beta) * ex if ex is not None else 0.0), match, alpha)
    order = np.argsort(-fused, kind="stable")
    return [replace(hits[j], rank=n + 1, score=float(fused[j]), similarity=float(sims[j]), match=float(match[j]),
                    hubness=float(prior[j]), exemplar=None if ex is None else float(ex[j]))
            for n, j in enumerate(order)]


class LiteBackend:
    """A bundled model's own fusion reranker over a library's stored patch tokens."""

    def __init__(self, library: Library, encoder, reranker=None, checkpoint=None):
        """reranker: anything with the banks.RerankBanks surface and `score` (session.RerankSession, the
        torch lite.Reranker); None: the one in `checkpoint` (default: the library's model's own,
        towers.bundled_reranker), on ONNX Runtime where available (session.load_scorer)."""
        if reranker is None:
            from xmodal.indexer.models.towers import bundled_reranker

            from xmodal.engine.rerank.session import load_scorer

            checkpoint = checkpoint or bundled_reranker(library.model or "")
            if checkpoint is None:
                raise FileNotFoundError(f"model {library.model!r} has no bundled reranker")
            reranker = load_scorer(checkpoint)
        self.reranker = reranker
        self._torch = reranker if hasattr(reranker, "attention") else None
        self._torch_lock = threading.Lock()
        self.library, self.encoder = library, encoder
        self.name, self.alpha, self.beta = getattr(reranker, "name", "lite"), reranker.alpha, reranker.beta
        if library.model is not None and self.name != library.model:
            logger.warning("%s: the reranker says it reads the %r model's features, but the library was built "
                           "with %r", library.root, self.name, library.model)
        self.explains = True
        self.projector = self.reranker.projector
        self._warned = False

    def attention(self, text: TextTokens, patches: np.ndarray) -> tuple[float, np.ndarray]:
        """One text against one photo's tokens -> (match, (T, P) word-over-patch attention), for `explain`: on
        the torch reranker, loaded on first use (searches never need it)."""
        with self._torch_lock:
            if self._torch is None:
                from xmodal.engine.rerank.lite import Reranker

                self._torch = Reranker(self.reranker.checkpoint)
        return self._torch.attention(text, patches)

    def priors(self, query: RerankQuery | None, hits: Sequence[SearchHit], direction: str
               ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(hubness priors, exemplar cosines) of the hits, from their stored dual vectors (images for "t2i",
        texts for "i2t"), read once. Hubness: None without a bank. Exemplar: text -> image only, None without
        an exemplar bank, with beta 0 or without the query's tokens. A hit whose vector is gone gets the median
        of the others (it keeps its place by similarity)."""
        rr = self.reranker
        if rr.hub is None or not hits:
            return None, None
        modality = "images" if direction == "t2i" else "texts"
        got = self.library.store.get_vectors(modality, [h.id for h in hits], rr.hub["texts"].shape[1])
        found = np.array([h.id in got for h in hits])
        if not found.any():
            return None, None
        vectors = np.stack([got[h.id] for h in hits if h.id in got])

        def per_hit(values: np.ndarray) -> np.ndarray:
            out = np.zeros(len(hits))
            out[found] = values
            out[~found] = np.median(values)
            return out

        prior = per_hit(rr.hub_prior(vectors, direction))
        use_exemplar = (direction == "t2i" and query is not None and query.tokens is not None and query.exemplar
                        and rr.exemplars is not None and self.beta.get(direction))
        exemplar = per_hit(rr.exemplar_scores(query.tokens, vectors)) if use_exemplar else None
        return prior, exemplar

    def text_query(self, text: str, exemplar: bool = True) -> tuple[np.ndarray, RerankQuery]:
        """One text-tower pass gives both the embedding and the token states the reranker reads."""
        vectors, tokens = self.query_tokens([text])
        return vectors[0], RerankQuery(text=text, tokens=tokens, exemplar=exemplar)

    def image_query(self, image: Image.Image) -> tuple[np.ndarray, RerankQuery]:
        vector, patches = self.query_patches(image)
        return vector, RerankQuery(image=image, patches=patches)

    def indexed_image_query(self, record: ImageRecord) -> RerankQuery:
        """From the photo's stored patch tokens (its file is read only when they are missing)."""
        tokens, _ = self.image_patches([record.id], [record.path])
        return RerankQuery(patches=tokens[0])

    def query_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, TextTokens]:
        vectors, states, mask, ids = self.encoder.encode_text_states(list(texts))
        return vectors, TextTokens(states, mask, ids)

    def query_patches(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """A query photo -> (its embedding, its (P, Cp) patch tokens), one forward pass."""
        vectors, raw = self.encoder.encode_images_with_patches([image])
        return vectors[0], self.projector(raw)[0]

    def image_patches(self, ids: Sequence[int], paths: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Stored tokens (K, P, Cp) of indexed photos and a (K,) found mask; photos without stored tokens are
        read from `paths` (slow path, logged once) when given."""
        store = self.library.patch_store()
        records = {r.id: r for r in self.library.store.get_images(list(ids))}
        shas = [records[i].sha256 if i in records else "" for i in ids]  # "" never matches a slot
        if store.spec is not None and store.spec != self.projector.spec:
            tokens = np.zeros((len(ids), self.projector.spec.tokens, self.projector.spec.dim), np.float16)
            found = np.zeros(len(ids), bool)  # made with another projection: as good as missing
        else:
            tokens, found = store.read(ids, shas)
            if store.spec is None:
                tokens = np.zeros((len(ids), self.projector.spec.tokens, self.projector.spec.dim), np.float16)
        if paths is not None and not found.all():
            if not self._warned:
                logger.warning("%s: some photos have no reranker patch tokens yet; run `xmodal index` to store "
                               "them (until then they are read from disk at query time)", self.library.root)
                self._warned = True
            for j in np.flatnonzero(~found):
                try:
                    _, tokens[j] = self.query_patches(read_image(paths[j]).image)
                    found[j] = True
                except DecodeError as e:
                    logger.warning("cannot rerank %s: %s", e.path, e.reason)
        return tokens, found

    def score_images(self, query: RerankQuery, hits: Sequence[SearchHit]) -> np.ndarray:
        tokens, found = self.image_patches([h.id for h in hits], [h.path for h in hits])
        match = self.reranker.score(query.tokens, tokens.astype(np.float32))
        return _neutral_where_missing(match, found)

    def text_states(self, hits: Sequence[SearchHit]) -> TextTokens:
        """Candidate texts' token states: stored at indexing (indexer.text_tokens), else computed now."""
        width = getattr(self.reranker, "text_dim", 384)  # the text tower's: 384 MiniLM, 768 MPNet
        stored = TextTokenStore(self.library.root, width=width).read([h.id for h in hits], [h.text for h in hits])
        missing = [j for j, s in enumerate(stored) if s is None]
        if missing:
            _, computed = self.query_tokens([hits[j].text for j in missing])
            for r, j in enumerate(missing):
                stored[j] = np.asarray(computed.states[r], np.float32)[: int(np.asarray(computed.mask[r]).sum())]
        t = max(len(s) for s in stored)
        states = np.zeros((len(stored), t, stored[0].shape[1]), np.float32)  # (K, T, C), zero-padded
        mask = np.zeros((len(stored), t), np.int64)
        for j, s in enumerate(stored):
            states[j, : len(s)] = np.asarray(s, np.float32)
            mask[j, : len(s)] = 1
        return TextTokens(states, mask)

    def score_texts(self, query: RerankQuery, hits: Sequence[SearchHit]) -> np.ndarray:
        if not hits:
            return np.zeros(0)
        return self.reranker.score(np.asarray(query.patches, np.float32), self.text_states(hits))


class BlipBackend:
    """BLIP's ITM head as the reranker: P(match) from the photos and texts themselves."""

    # BLIP's probability dominates; the similarity breaks ties (BLIP itself adds its ITM and ITC scores)
    alpha = {"t2i": 1.0, "i2t": 1.0}
    beta = {"t2i": 0.0, "i2t": 0.0}
    explains = False

    def __init__(self, name: str, encoder):
        from xmodal.engine.rerank.blip import BlipReranker

        self.model = BlipReranker(name)
        self.name, self.encoder = name, encoder

    def text_query(self, text: str, exemplar: bool = True) -> tuple[np.ndarray, RerankQuery]:
        return self.encoder.encode_texts([text])[0], RerankQuery(text=text, exemplar=exemplar)

    def image_query(self, image: Image.Image) -> tuple[np.ndarray, RerankQuery]:
        return self.encoder.encode_images([image])[0], RerankQuery(image=image)

    def indexed_image_query(self, record: ImageRecord) -> RerankQuery:
        """BLIP reads the photo itself."""
        return RerankQuery(image=read_image(record.path).image)

    def score_images(self, query: RerankQuery, hits: Sequence[SearchHit]) -> np.ndarray:
        images, found = [], np.ones(len(hits), bool)
        for j, h in enumerate(hits):
            try:
                images.append(read_image(h.path).image)
            except DecodeError as e:
                logger.warning("cannot rerank %s: %s", e.path, e.reason)
                images.append(Image.new("RGB", (8, 8)))
                found[j] = False
        return _neutral_where_missing(self.model.score(query.text, images), found)

    def score_texts(self, query: RerankQuery, hits: Sequence[SearchHit]) -> np.ndarray:
        return self.model.score(query.image, [h.text for h in hits])

    def priors(self, query: RerankQuery | None, hits: Sequence[SearchHit], direction: str) -> tuple[None, None]:
        return None, None  # BLIP's own scores need no hubness correction or exemplars


def _neutral_where_missing(match: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Candidates that could not be scored get the median match of the others: they keep their place by
    similarity instead of being pushed up or down by a score they never got."""
    match = np.asarray(match, np.float64).copy()
    if found.any() and not found.all():
        match[~found] = np.median(match[found])
    elif not found.any():
        match[:] = 0.0
    return match
