"""The query engine: the Python API behind the CLI and the web server.

    with SearchEngine(library_dir) as eng:
        eng.search_text("a dog jumping into a lake", k=10)            # text -> images
        eng.search_image("holiday.jpg", k=10, target="texts")         # image -> texts
"""
from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import replace
from datetime import date
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

from xmodal.indexer.ingest.decode import DecodeError, read_image
from xmodal.indexer.ingest.watch import watch_status
from xmodal.indexer.models.base import Encoder, ModelUnavailable
from xmodal.indexer.models.encoders import get_query_encoder
from xmodal.indexer.models.towers import bundled_reranker
from xmodal.indexer.storage.library import Library, LibraryError
from xmodal.indexer.storage.revision import encoder_revision, recorded_revision, search_problem, stale_counts
from xmodal.indexer.records import ImageRecord, SearchHit
from xmodal.indexer.storage.store import StoreError

from xmodal.engine.rerank.choice import check_bundled_reranker, is_bundled_choice, no_reranker_reason
from xmodal.engine.search.cutoff import SORTS, Cut, apply_cutoff, by_date
from xmodal.engine.search.errors import SearchError
from xmodal.engine.search.filters import image_filter, language_notice
from xmodal.engine.search.query_terms import ParsedQuery, QueryParseError, combine, parse_query

if TYPE_CHECKING:
    from xmodal.engine.duplicates.finder import DuplicateReport
    from xmodal.engine.rerank.backends import RerankBackend

logger = logging.getLogger(__name__)
TARGETS = ("images", "texts")
MAX_SIMILARITY = 2.0  # cosines of unit vectors lie in [-1, 1]; compressed codes stray a little, never this far
FULL_SIZE = 1 << 20  # decode without JPEG draft reduction (explain draws on the photo at its own size)


class SearchEngine:
    """Read-side handle on a library: encodes queries with the library's own model.

    Safe to share between threads (the web server's request pool): the encoder, the reranker and the
    indexes are loaded once under a lock, and the work itself (ONNX Runtime, FAISS, SQLite reads, numpy)
    runs concurrently, those libraries releasing the GIL."""

    def __init__(self, library_dir: str | os.PathLike, model: str | None = None, reranker: str | None = "auto"):
        """`reranker`: "auto" (the library's model's own bundled cross-attention reranker when it has one
        installed, none otherwise), "bundled" (that reranker, or an error when the model has none), the name of
        the library's bundled model ("lite" for a lite library, as before), a BLIP image-text-matching
        checkpoint (name or folder), or None (off)."""
        try:
            self.library = Library(library_dir)
        except StoreError as e:
            raise SearchError(str(e)) from e
        built_with = self.library.model
        if built_with is None:
            raise SearchError(f"library {self.library.root} is empty; run `xmodal index PATH` first")
        if model is not None and model != built_with:
            raise SearchError(f"library {self.library.root} was built with model {built_with!r}; "
                              f"queries with {model!r} would be meaningless (use --model {built_with})")
        self.model_name = built_with
        self._encoder: Encoder | None = None
        try:
            check_bundled_reranker(reranker, built_with, self.library.root)
        except SearchError:
            self.library.close()
            raise
        self.reranker_name = reranker
        self._backend = None
        self._flagged = False  # impossible similarities seen (logged once)
        self._lock = threading.RLock()  # lazy loads and index reloads; never held during a query's work
        self._calibration: tuple = ()  # (Calibration | None,) once looked up

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    encoder = get_query_encoder(self.model_name)
                    self._check_weights(encoder)
                    self._encoder = encoder
        return self._encoder

    def _check_weights(self, encoder: Encoder) -> None:
        """Refuse a library whose vectors come from other weights of its model (indexer.storage.revision);
        warn while a re-embedding for these weights is unfinished."""
        problem = search_problem(self.library, encoder_revision(encoder))
        if problem:
            raise SearchError(problem)
        stale = stale_counts(self.library)["images"]  # reads no ids unless a re-embedding is unfinished
        if stale:
            logger.warning("%s: %d photos still carry vectors from the model's earlier weights and rank "
                           "unreliably until `xmodal index` embeds them again", self.library.root, stale)

    @property
    def reranker(self) -> "RerankBackend | None":
        """The rerank backend (engine/rerank/backends.py), or None when reranking is off or unavailable."""
        if self._backend is None and self.reranker_name:
            with self._lock:
                if self._backend is None and self.reranker_name:
                    self._load_reranker()
        return self._backend

    def _load_reranker(self) -> None:
        from xmodal.engine.rerank.backends import BlipBackend, LiteBackend

        try:
            if is_bundled_choice(self.reranker_name):
                path = bundled_reranker(self.model_name)  # checked in __init__ unless "auto"
                if path is not None:
                    self._backend = LiteBackend(self.library, self.encoder, checkpoint=path)
            else:
                self._backend = BlipBackend(self.reranker_name, self.encoder)
        except (OSError, ModelUnavailable) as e:
            raise SearchError(f"cannot load reranker {self.reranker_name!r}: {e}") from e
        if self._backend is None:
            self.reranker_name = None
    @property
    def calibration(self):
        """The shipped calibration (engine.search.calibration) when the library's model and the bundled
        checkpoints are the ones it was fitted with, else None (hits then carry no `prob`)."""
        if not self._calibration:
            from xmodal.engine.search.calibration import load_calibration
            from xmodal.indexer.models.patch_projector import LITE_RERANK
            from xmodal.indexer.resources import data_file

            self._calibration = (load_calibration(self.model_name, {"lite-align.pt": data_file("lite-align.pt"),
                                                                    "lite-rerank.pt": LITE_RERANK}),)
        return self._calibration[0]

    @property
    def default_cutoff(self) -> float:
        """The probability `--cutoff` keeps from: chosen on Flickr8k dev (benchmarks/calibration.py)."""
        if self.calibration is None:
            raise SearchError(f"library {self.library.root} was built with {self.model_name!r}, which has no "
                              "calibrated probabilities: a cutoff needs the lite model")
        return self.calibration.default_cutoff

    def _probs(self, hits: list[SearchHit], direction: str, target: str) -> list[SearchHit]:
        """Text -> image hits with their calibrated `prob` (all candidates at once: the features compare each
        to the best), when the engine has a calibration."""
        if direction != "t2i" or target != "images" or self.calibration is None:
            return hits
        from xmodal.engine.search.calibration import with_probs

        lite = self._backend is not None and self._backend.name == "lite"
        return with_probs(hits, self.calibration, reranked_ok=lite)

    def refine(self, hits: list[SearchHit], min_prob: float | None = None, sort: str = "score") -> Cut:
        """What to show of a search's hits: those with `prob` >= min_prob (None: all), ordered by score or,
        with sort="date", newest first by date taken (else file time). Cut.best_prob says how close the best
        hit came when none passed."""
        if sort not in SORTS:
            raise SearchError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
        if min_prob is not None:
            if not 0.0 <= min_prob <= 1.0:
                raise SearchError(f"a minimum probability lies between 0 and 1, got {min_prob}")
            if any(h.prob is None and not h.matched for h in hits):
                raise SearchError("a probability cutoff applies to text -> image searches of a library built with "
                                  "the lite model (the only calibrated one)")
        cut = apply_cutoff(hits, min_prob)
        if sort == "date" and cut.hits:
            if any(h.path is None for h in cut.hits):
                raise SearchError("sorting by date applies to image hits; drop --sort date for --target texts")
            records = {r.id: r for r in self.library.store.get_images([h.id for h in cut.hits])}
            cut = replace(cut, hits=by_date(cut.hits, records))
        return cut

    def _rerank_k(self, rerank_k: int | None) -> int:
        """How many candidates to rerank: the default when None, 0 when reranking is off."""
        if rerank_k is not None and rerank_k < 0:
            raise SearchError(f"rerank_k must be 0 (off) or more, got {rerank_k}")
        if rerank_k == 0 or self.reranker is None:
            return 0
        from xmodal.engine.rerank import DEFAULT_RERANK_K

        return DEFAULT_RERANK_K if rerank_k is None else int(rerank_k)

    def _reranked(self, hits: list[SearchHit], k: int, rk: int, score, direction: str, query) -> list[SearchHit]:
        """Rerank the first rk hits with score(hits) -> match scores; the rest follow in dual order."""
        from xmodal.engine.rerank.backends import rerank_hits

        backend = self.reranker
        match = score(hits[:rk])
        prior, exemplar = backend.priors(query, hits[:rk], direction)
        head = rerank_hits(hits[:rk], match, backend.alpha[direction], prior, exemplar, backend.beta[direction])
        tail = [replace(h, rank=len(head) + n + 1) for n, h in enumerate(hits[rk:])]
        return self._probs(head + tail, direction, "images" if direction == "t2i" else "texts")[:k]

    def close(self) -> None:
        self.library.close()

    def __enter__(self) -> "SearchEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ queries
    # Every query method takes optional image filters (keyword-only): `folder` keeps photos under that
    # folder (recursively); `taken_after` / `taken_before` keep photos whose EXIF date taken is on or
    # after / on or before that day (photos without a date taken are then left out).
    # Text -> image and image -> text queries rerank the top `rerank_k` candidates (None: the default,
    # 0: off) when the engine has a reranker; image -> image and text -> text are not reranked.
    def search_text(self, query: str, k: int = 10, target: str = "images", rerank_k: int | None = None,
                    exemplar: bool = True, min_prob: float | None = None, sort: str = "score",
                    mode: str | None = None, **filters) -> list[SearchHit]:
        """exemplar=False leaves the reranker's exemplar term out (it draws on the Flickr8k train captions,
        whose photos may not resemble what a query about other things asks for). Image hits carry `prob`;
        min_prob and sort: see refine (the cutoff applies to the top k).
        The query may use the query algebra (engine/search/query_terms.py): `a dog -grass`,
        `beach + 2:sunset`; retrieval uses the terms' combined vector, the reranker scores the positive terms.
        `mode`: "semantic", "keyword" (the photos' names, descriptions and OCR text, matched against the
        positive terms) or "hybrid" (both in one ranking, the default for photos; see keyword_search.py);
        image hits with matched words carry `matched`."""
        from xmodal.engine.search.keyword_search import check_mode, fused_search

        parsed = self.parse_query(query)
        mode = check_mode(mode, target)

        def semantic(n: int) -> list[SearchHit]:
            if parsed.simple:
                text = parsed.terms[0].text
                return self._search(lambda: self.encoder.encode_texts([text])[0],
                                    lambda backend: backend.text_query(text, exemplar),
                                    "t2i", n, target, rerank_k, filters)

            def rerank_query(backend):
                _, rq = backend.text_query(parsed.positive_text, exemplar)
                return self._combined(parsed), rq

            return self._search(lambda: self._combined(parsed), rerank_query, "t2i", n, target, rerank_k, filters)

        if mode == "semantic":
            hits = semantic(k)
        else:
            hits = fused_search(self.library.store, parsed.positive_text, k, mode, semantic, filters)
        return self.refine(hits, min_prob, sort).hits if min_prob is not None or sort != "score" else hits

    def parse_query(self, query: str, with_photo: bool = False) -> "ParsedQuery":
        """A text query's weighted terms (engine/search/query_terms.py); a SearchError when none is positive
        (unless `with_photo`: words added to a query photo may only exclude)."""
        query = valid_text(query)
        if not query or not query.strip():
            raise SearchError("empty query: give some words to search for")
        try:
            return parse_query(query, need_positive=not with_photo)
        except QueryParseError as e:
            raise SearchError(str(e)) from e

    def _combined(self, parsed: "ParsedQuery", image_vector: np.ndarray | None = None) -> np.ndarray:
        """The weighted sum of the terms' unit vectors (and a query photo's, weight 1), renormalised."""
        vectors = self.encoder.encode_texts([t.text for t in parsed.terms])
        weights = [t.weight for t in parsed.terms]
        if image_vector is not None:
            vectors, weights = np.vstack([image_vector[None, :], vectors]), [1.0] + weights
        try:
            return combine(vectors, weights)
        except ValueError as e:
            raise SearchError(f"{e} ({parsed.describe()})") from e

    def search_image(self, image: str | os.PathLike | Image.Image, k: int = 10,
                     target: str = "images", rerank_k: int | None = None, *, text: str | None = None,
                     **filters) -> list[SearchHit]:
        """`text`: words to combine with the photo (`in winter`, `-people`): the photo's unit vector plus the
        terms' (query algebra), renormalised. Image -> texts reranks by the photo alone."""
        if not isinstance(image, Image.Image):
            try:
                image = read_image(os.fspath(image)).image
            except DecodeError as e:
                raise SearchError(f"cannot use {e.path} as a query image: {e.reason}") from e
        parsed = self.parse_query(text, with_photo=True) if text is not None else None
        if parsed is None:
            return self._search(lambda: self.encoder.encode_images([image])[0],
                                lambda backend: backend.image_query(image),
                                "i2t", k, target, rerank_k, filters)

        def rerank_query(backend):
            vector, rq = backend.image_query(image)
            return self._combined(parsed, vector), rq

        return self._search(lambda: self._combined(parsed, self.encoder.encode_images([image])[0]),
                            rerank_query, "i2t", k, target, rerank_k, filters)

    def similar(self, image_id: int, k: int = 10, target: str = "images", rerank_k: int | None = None,
                exclude_self: bool = False, *, text: str | None = None, **filters) -> list[SearchHit]:
        """'More like this' for an indexed image, from its exact vector in the store (a memory-mapped IVF index
        cannot reconstruct one, and a PQ index only approximately; no file is opened when its patch tokens
        are stored). The photo itself comes first (its own nearest neighbour) unless `exclude_self`, which
        leaves it out of image hits and still returns k of the others (ranks from 1). `text`: words to add,
        as in search_image (`in winter`, `-people`): the photo's unit vector plus the terms', renormalised."""
        if exclude_self and target == "images":
            hits = [h for h in self.similar(image_id, k + 1, target, rerank_k, text=text, **filters)
                    if h.id != int(image_id)]
            return [replace(h, rank=n + 1) for n, h in enumerate(hits[:k])]
        parsed = self.parse_query(text, with_photo=True) if text is not None else None
        index = self._index("images")
        vector = self.library.store.get_vectors("images", [int(image_id)], index.dim).get(int(image_id))
        if vector is None:
            if int(image_id) not in set(index.ids().tolist()):
                raise SearchError(f"no image with id {image_id} in {self.library.root}")
            vector = index.reconstruct([image_id])[0]  # a row from before vectors were stored

        def embed():
            return vector if parsed is None else self._combined(parsed, vector)

        def rerank_query(backend):
            try:
                return embed(), backend.indexed_image_query(self.image_record(image_id))
            except DecodeError as e:
                raise SearchError(f"cannot rerank for {e.path}: {e.reason}") from e

        return self._search(embed, rerank_query, "i2t", k, target, rerank_k, filters)

    def notice(self, query: str) -> str | None:
        """A warning to show beside the results of text `query`, or None (see filters.language_notice)."""
        return language_notice(valid_text(query), getattr(self.encoder, "languages", None))

    def _search(self, embed, rerank_query, direction: str, k: int, target: str, rerank_k: int | None,
                filters: dict) -> list[SearchHit]:
        """The skeleton every query shares. embed() -> the query's (dim,) vector; rerank_query(backend) ->
        (vector, RerankQuery), one pass for both where the backend can. Text -> image ("t2i") and
        image -> text ("i2t") rerank the top rerank_k; image -> image and text -> text never do."""
        reranks = target == ("images" if direction == "t2i" else "texts")
        rk = self._rerank_k(rerank_k) if reranks else 0
        if not rk:
            return self._probs(self.search_vector(embed(), k, target, **filters), direction, target)
        backend = self.reranker
        vector, query = rerank_query(backend)
        hits = self.search_vector(vector, max(k, rk), target, **filters)
        score = backend.score_images if direction == "t2i" else backend.score_texts
        return self._reranked(hits, k, rk, lambda h: score(query, h), direction, query)

    def search_vector(self, vector: np.ndarray, k: int, target: str = "images", *, folder: str | None = None,
                      taken_after: date | None = None, taken_before: date | None = None) -> list[SearchHit]:
        if target not in TARGETS:
            raise SearchError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
        if k < 1:
            raise SearchError(f"k must be at least 1, got {k}")
        query = np.asarray(vector, np.float32)[None, :]
        keep = image_filter(folder, taken_after, taken_before)
        if keep is None:
            scores, ids = self._index(target).search(query, k)
            return self._hits(target, scores[0], ids[0])
        if target != "images":
            raise SearchError("folder and date filters apply to images only; drop them for --target texts")
        # Over-fetch candidates from FAISS and filter on the store records; widen until k pass or all seen.
        index = self._index("images")
        fetch = min(index.ntotal, max(100, 10 * k))
        while True:
            scores, ids = index.search(query, fetch)
            valid = [(float(s), int(i)) for s, i in zip(*self._plausible("images", scores[0], ids[0])) if i >= 0]
            records = {r.id: r for r in self.library.store.get_images([i for _, i in valid])}
            kept = [(s, records[i]) for s, i in valid if i in records and keep(records[i])]
            if len(kept) >= k or fetch >= index.ntotal:
                break
            fetch = min(index.ntotal, fetch * 4)
        return [SearchHit(rank=n + 1, score=s, id=r.id, path=r.path) for n, (s, r) in enumerate(kept[:k])]

    # ------------------------------------------------------------------ duplicates
    def find_duplicates(self, threshold: float | None = None, k: int | None = None) -> "DuplicateReport":
        """Groups of exact and near copies among the library's photos, each with the copy to keep and why
        (engine/duplicates). `threshold` in [0, 1]: the pixel confirmation a near copy needs (lower it to
        group bursts too); `k`: neighbours searched per photo. Reads only files in candidate pairs; deletes nothing."""
        from xmodal.engine.duplicates import candidates, confirm
        from xmodal.engine.duplicates.finder import find_duplicates

        threshold = confirm.DEFAULT_THRESHOLD if threshold is None else float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise SearchError(f"threshold must be between 0 and 1, got {threshold}")
        if k is not None and k < 1:
            raise SearchError(f"k must be at least 1, got {k}")
        return find_duplicates(self.library.store, self._index("images"), threshold, k or candidates.DEFAULT_K)

    # ------------------------------------------------------------------ explain
    def explain(self, query: str, image: int | str | os.PathLike | Image.Image):
        """Which regions of a photo (an indexed id, a file or a PIL image) the reranker matched with which
        words of `query` -> (engine.explain.Explanation, the photo)."""
        from xmodal.engine.rerank.explain import explanation

        query = valid_text(query)
        if not query or not query.strip():
            raise SearchError("empty query: give some words to explain")
        backend = self.reranker
        if backend is not None and not backend.explains:
            raise SearchError(f"explain needs the library's model's own cross-attention reranker; {backend.name!r} "
                              "cannot show which regions matched (use reranker='bundled')")
        if backend is None:
            why = ("reranking is off in this engine" if bundled_reranker(self.model_name) is not None
                   else f"{self.model_name!r} has none here ({no_reranker_reason(self.model_name)})")
            raise SearchError(f"explain needs the library's model's own cross-attention reranker; {why}")
        if isinstance(image, int):
            record = self.image_record(image)
            if record is None:
                raise SearchError(f"no image with id {image} in {self.library.root}")
            try:
                photo = read_image(record.path, target_size=FULL_SIZE).image
            except DecodeError as e:
                raise SearchError(f"cannot read {e.path}: {e.reason}") from e
            tokens, _ = backend.image_patches([image], [record.path])
            patches = tokens[0]
        else:
            if not isinstance(image, Image.Image):
                try:
                    image = read_image(os.fspath(image), target_size=FULL_SIZE).image
                except DecodeError as e:
                    raise SearchError(f"cannot use {e.path}: {e.reason}") from e
            photo = image
            _, patches = backend.query_patches(photo)
        _, text = backend.query_tokens([query])
        match, attention = backend.attention(text, patches)
        words = self.encoder.tokenizer.convert_ids_to_tokens(text.ids[0].tolist())
        n = int(text.mask[0].sum())
        side = int(round(len(patches) ** 0.5))
        return explanation(query, words[:n], attention[:n], match, grid=(side, len(patches) // side)), photo

    # ------------------------------------------------------------------ helpers
    def _index(self, target: str):
        """The target's index as of the store's last commit: a long-lived engine (the web server) picks up
        what an indexer committed since, at the cost of one meta read per query."""
        try:
            with self._lock:
                index = self.library.vector_index(target)
                committed = self.library.store.get_meta(f"generation.{target}", 0)
                if index.generation != committed:
                    self.library.forget_index(target)
                    index = self.library.vector_index(target)
                return index
        except LibraryError as e:
            raise SearchError(str(e)) from e

    def image_record(self, image_id: int) -> ImageRecord | None:
        """The stored record of one image, or None when the library has no such id."""
        found = self.library.store.get_images([int(image_id)])
        return found[0] if found else None

    def _hits(self, target: str, scores: Sequence[float], ids: Sequence[int]) -> list[SearchHit]:
        scores, ids = self._plausible(target, scores, ids)
        if target == "images":
            records = {r.id: r for r in self.library.store.get_images(ids)}
            pairs = [(s, i, records[i].path, None) for s, i in zip(scores, ids) if i in records]
        else:
            records = {r.id: r for r in self.library.store.get_texts(ids)}
            pairs = [(s, i, None, records[i].text) for s, i in zip(scores, ids) if i in records]
        return [SearchHit(rank=n + 1, score=float(s), id=i, path=p, text=t) for n, (s, i, p, t) in enumerate(pairs)]

    def _plausible(self, target: str, scores: Sequence[float], ids: Sequence[int]) -> tuple[list[float], list[int]]:
        """Drop hits whose similarity no pair of unit vectors can have (NaN, infinite, or far outside
        [-1, 1]): a damaged index file. They are never shown; the library is flagged in the log."""
        kept = [(float(s), int(i)) for s, i in zip(scores, ids) if math.isfinite(s) and abs(s) <= MAX_SIMILARITY]
        if len(kept) < len(ids) and not self._flagged:
            self._flagged = True
            logger.warning("%s: the %s index returned impossible similarities (a damaged file?); those hits are "
                           "left out: run `xmodal check --repair`", self.library.root, target)
        return [s for s, _ in kept], [i for _, i in kept]

    # ------------------------------------------------------------------ info
    def info(self) -> dict:
        with self._lock:
            return library_info(self.library)


def valid_text(text: str) -> str:
    """A query as valid Unicode: bytes that were not UTF-8 (a shell passes them on as lone surrogates, which
    tokenizers refuse) become U+FFFD."""
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the bytes the shell gave, each bad one a U+FFFD
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")  # other lone surrogates
    return raw.decode("utf-8", "replace")


def library_info(library: Library) -> dict:
    store = library.store
    out = {
        "library": str(library.root),
        "images": store.count_images(),
        "texts": store.count_texts(),
        "model": library.model,
        "revision": recorded_revision(library),  # of the weights its vectors come from (None: not recorded)
        "stale": stale_counts(library),  # rows an unfinished re-embedding for new weights has still to redo
        "dim": store.get_meta("dim"),
        "schema_version": store.schema_version,
        "text_sources": store.text_sources(),
        "ocr": {"on": bool(store.get_meta("ocr", False)), "photos_read": store.count_read_by_ocr()},
        "captions": {"photos": store.count_captioned()},  # photos with texts of a corpus linked to them
        "indexes": {},
        "bytes": library.sizes(),
        "watch": watch_status(library.root),  # the heartbeat of a running `xmodal watch`, else None
    }
    for modality in ("images", "texts"):
        path = library.index_path(modality)
        if path.exists():
            idx = library.vector_index(modality)
            out["indexes"][modality] = {"factory": idx.factory, "vectors": idx.ntotal,
                                        "search_params": idx.search_params,
                                        "lists_on_disk": os.path.basename(idx.lists_file) if idx.lists_file else None}
    out["bytes_total"] = sum(out["bytes"].values())
    return out
