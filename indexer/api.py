"""The write path as a library (what `xmodal index` and `xmodal index-texts` call):

    from xmodal.indexer import index_folders, index_text_corpus

    report = index_folders("my-library", ["~/Pictures"])         # new or edited photos only, resumable
    index_text_corpus("my-library", "captions.txt")              # .txt / .csv / .jsonl

The library's own model is used when it has one (else `model`, default "lite"), and for a model with its own
bundled reranker (lite; base once base-rerank.pt ships) each photo's patch tokens are stored for it."""
from __future__ import annotations

import os
from typing import Callable, Sequence

from xmodal.indexer.ingest.pipeline import IndexReport, TextReport, index_images, index_texts
from xmodal.indexer.models.base import Encoder
from xmodal.indexer.models.encoders import get_encoder
from xmodal.indexer.models.patch_projector import default_projector
from xmodal.indexer.storage.library import Library

ENGINES = ("local", "ray")  # where photos are embedded: this process, or Ray workers


def library_model(library_dir: str | os.PathLike) -> str | None:
    """The model a library was built with, or None for a new (or empty) library."""
    if not os.path.exists(os.path.join(library_dir, "library.db")):
        return None
    with Library(library_dir) as lib:
        return lib.model


def library_encoder(library_dir: str | os.PathLike, model: str | Encoder | None = None) -> Encoder:
    """The encoder to index with: `model` (a name or an encoder), else the library's own, else "lite".
    Refuses (LibraryError) at once when another process is writing the library, before any model loads."""
    own = None
    if os.path.exists(os.path.join(library_dir, "library.db")):
        with Library(library_dir) as lib:
            lib.ensure_no_writer()
            own = lib.model
    if model is not None and not isinstance(model, str):
        return model
    return get_encoder(model or own or "lite")


def index_folders(library_dir: str | os.PathLike, paths: Sequence[str | os.PathLike] = (),
                  model: str | Encoder | None = None,
                  batch_size: int = 16, patches: bool = True, progress: Callable[[int, int], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, verify: bool = False, engine: str = "local",
                  ray_address: str | None = None, workers: int | None = None, device: str = "cpu",
                  shard_size: int | None = None, ocr: bool | None = None) -> IndexReport:
    """Index the photos under `paths` (recursively) into the library at `library_dir` (made if new); with no
    paths, refresh every folder it knows. A leading "~" means the home folder, as in a shell. Only new or edited files are embedded; moved files keep their
    vectors, deleted ones are dropped; every batch is committed, so a stopped run resumes where it ended.
    With `verify` every known file's content is hashed again, whatever its size, times and inode say.

    `engine="ray"` embeds on Ray workers (`pip install 'xmodal[ray]'`; indexer.distributed.ray_runner): a
    local Ray instance, or the cluster at `ray_address`, with `workers` actors (default: one per CPU) and
    shards of `shard_size` photos. `device` ("cpu", "cuda", "cuda:N") is where torch encoders run.
    `ocr`: True reads the text in the photos (photos indexed before included) and keeps OCR on for later
    runs, False turns it off, None (default) follows the library's setting (with Ray: read by the driver
    after the workers' embeddings are merged)."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    encoder = library_encoder(library_dir, model)
    projector = default_projector(encoder.name) if patches else None
    paths = [os.path.expanduser(os.fspath(p)) for p in paths]
    if engine == "ray":
        from xmodal.indexer.distributed.plan import SHARD_SIZE
        from xmodal.indexer.distributed.ray_runner import index_images_ray
        from xmodal.indexer.models.device import check_device

        device = check_device(device, here=False)  # the workers (with the GPUs) place their own encoders
        with Library(library_dir, create=True) as lib:
            return index_images_ray(lib, paths, encoder, address=ray_address, workers=workers, device=device,
                                    batch_size=batch_size, shard_size=shard_size or SHARD_SIZE,
                                    progress=progress, should_stop=should_stop, patches=projector, verify=verify,
                                    ocr=text_reader(lib, ocr), ocr_setting=ocr)
    if device != "cpu":
        from xmodal.indexer.models.device import batch_size_for, place

        encoder = place(encoder, device)
        batch_size = batch_size_for(device, batch_size)
    with Library(library_dir, create=True) as lib:
        reader = text_reader(lib, ocr)
        return index_images(lib, paths, encoder, batch_size=batch_size, progress=progress,
                            should_stop=should_stop, patches=projector, verify=verify, ocr=reader, ocr_setting=ocr)


def text_reader(lib: Library, ocr: bool | None):
    """The OCR reader to use: when `ocr` is True, or None and the library has OCR on; else None.
    Raises OcrUnavailable (with what to install) when OCR is asked for and not installed."""
    if ocr is False or (ocr is None and not lib.store.get_meta("ocr", False)):
        return None
    from xmodal.indexer.ingest.ocr import get_reader

    return get_reader()


def index_text_corpus(library_dir: str | os.PathLike, path: str | os.PathLike, model: str | Encoder | None = None,
                      progress: Callable[[int, int], None] | None = None) -> TextReport:
    """Index a text corpus (.txt one per line, .csv `caption` or `text` column, .jsonl `text`) into the
    library, replacing an earlier import of the same file; for a model with its own reranker the texts'
    token states are stored for it."""
    encoder = library_encoder(library_dir, model)
    tokens = default_projector(encoder.name) is not None  # the model's own reranker will read them
    with Library(library_dir, create=True) as lib:
        return index_texts(lib, os.fspath(path), encoder, progress=progress, tokens=tokens)
