"""xmodal's write path: models (encoders and their registry), ingest (walk, decode, encode in batches) and
storage (the SQLite store, FAISS indexes, the library that holds them).

The names below are the Python API; they load lazily, so importing a submodule stays cheap:

    from xmodal.indexer import index_folders, Library, get_encoder
"""
from importlib import import_module

_API = {
    "index_folders": "xmodal.indexer.api",
    "index_text_corpus": "xmodal.indexer.api",
    "library_model": "xmodal.indexer.api",
    "library_encoder": "xmodal.indexer.api",
    "watch_folders": "xmodal.indexer.ingest.watch",
    "watch_status": "xmodal.indexer.ingest.watch",
    "Library": "xmodal.indexer.storage.library",
    "LibraryError": "xmodal.indexer.storage.library",
    "get_encoder": "xmodal.indexer.models.encoders",
    "register_encoder": "xmodal.indexer.models.encoders",
    "available_encoders": "xmodal.indexer.models.encoders",
    "Encoder": "xmodal.indexer.models.base",
    "ImageRecord": "xmodal.indexer.records",
    "SearchHit": "xmodal.indexer.records",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'xmodal.indexer' has no attribute {name!r}")
