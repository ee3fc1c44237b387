"""A library folder: the SQLite store (library.db) plus one FAISS index per modality (images.faiss,
texts.faiss), all written with the model recorded in the store.

Consistency: store rows are committed batch by batch; the FAISS files are saved at checkpoints. When a
run dies between the two, `reconcile()` (run before every indexing job) drops the store rows whose
vectors never reached disk -- those files count as new on the next run and are embedded again -- and
drops vectors that have no row.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .index_choice import choose_index
from .store import Store
from .vector_index import VectorIndex

logger = logging.getLogger(__name__)

MODALITIES = ("images", "texts")


class LibraryError(Exception):
    """The library cannot be used as asked (wrong model, not a library...)."""


def default_library_dir() -> Path:
    """$XMODAL_LIBRARY, else $XDG_DATA_HOME/xmodal/library (~/.local/share/xmodal/library)."""
    if os.environ.get("XMODAL_LIBRARY"):
        return Path(os.environ["XMODAL_LIBRARY"]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "xmodal" / "library"


class Library:
    """Open (or with create=True, make) the library at `root`."""

    def __init__(self, root: str | os.PathLike, create: bool = False):
        self.root = Path(root).expanduser().resolve()
        if create:
            if self.root.exists() and not self.root.is_dir():
                raise LibraryError(f"{self.root} is a file, not a library folder; choose another --library")
            if self.root.is_dir() and any(self.root.iterdir()) and not (self.root / "library.db").exists():
                raise LibraryError(f"{self.root} is a non-empty folder that is not an xmodal library; "
                                   "choose an empty or new folder for --library")
            self.root.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.root, create=create)
        self._indexes: dict[str, VectorIndex] = {}

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ model
    @property
    def model(self) -> str | None:
        return self.store.get_meta("model")

    def bind_model(self, name: str, dim: int) -> None:
        """Record the model on first use; refuse a different one later (vectors would be incomparable)."""
        current = self.model
        if current is None:
            self.store.set_meta("model", name)
            self.store.set_meta("dim", dim)
        elif current != name:
            raise LibraryError(f"library {self.root} was built with model {current!r}, not {name!r}; "
                               f"use --model {current} or a new --library")

    # ------------------------------------------------------------------ vector indexes
    def index_path(self, modality: str) -> Path:
        return self.root / f"{modality}.faiss"

    def vector_index(self, modality: str) -> VectorIndex:
        """The modality's FAISS index (created empty, with the chosen factory, if it has none yet)."""
        if modality not in self._indexes:
            path = self.index_path(modality)
            if path.exists():
                self._indexes[modality] = VectorIndex.load(path)
            else:
                dim = self.store.get_meta("dim")
                if dim is None:
                    raise LibraryError(f"library {self.root} holds no vectors yet; run `xmodal index PATH` first")
                self._indexes[modality] = VectorIndex.create(int(dim), choose_index(0, int(dim)))
        return self._indexes[modality]

    def save(self, modality: str) -> None:
        if modality in self._indexes:
            self._indexes[modality].save(self.index_path(modality))

    def reconcile(self) -> dict[str, int]:
        """Make store rows and vectors agree (see module doc). Returns how many of each were dropped."""
        dropped = {}
        if self.store.get_meta("dim") is None:
            return dropped
        for modality in MODALITIES:
            index = self.vector_index(modality)
            store_ids = self.store.all_image_ids() if modality == "images" else self.store.all_text_ids()
            index_ids = index.ids()
            rows_without = np.setdiff1d(store_ids, index_ids)
            vectors_without = np.setdiff1d(index_ids, store_ids)
            if len(rows_without):
                delete = self.store.delete_images if modality == "images" else self.store.delete_texts
                delete(rows_without.tolist())
                logger.warning("%s: %d %s rows had no saved vector (interrupted run); they will be re-embedded",
                               self.root, len(rows_without), modality)
            if len(vectors_without):
                index.remove(vectors_without)
                self.save(modality)
            if len(rows_without) or len(vectors_without):
                dropped[modality] = int(len(rows_without) + len(vectors_without))
        return dropped

    def sizes(self) -> dict[str, int]:
        """Bytes on disk of each library file."""
        return {p.name: p.stat().st_size for p in sorted(self.root.iterdir()) if p.is_file()}
